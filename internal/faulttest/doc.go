// Package faulttest holds what the fault tests share: a counting HTTP
// target for the built-in http_request handler, a verifier that reads every
// row back (lost, completed twice, run twice), a driver that posts events
// the way Hasura does, and the Result each fault test records.
//
// It is test support: nothing in the services imports it.
package faulttest
