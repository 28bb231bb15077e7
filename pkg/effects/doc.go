// Package effects is the library handler authors import.
//
// An effect is a row of the effects table: a kind and a JSON payload that
// describe a change to make to the world. The ingest service puts each new row
// on the JetStream subject "effects.<kind>"; a dispatcher runs the handler
// registered for that kind; the outcome goes to "effects.completed.<kind>" as a
// [Completion]; the completer writes it back into the row.
//
// This package holds what every participant shares: the wire formats
// ([Effect], [Completion]), the subject and stream names, kind validation, the
// errors that steer retries ([Permanent], [RetryAfter]), the handler
// [Registry], and the [Client] that publishes a completion from any process
// (the "chained callback" of an async handler).
package effects
