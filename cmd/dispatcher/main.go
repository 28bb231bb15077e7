// Command dispatcher runs the built-in effect handlers ("echo" and
// "http_request"). To run handlers of your own, write a binary like this one
// that registers them first; see the README.
package main

import (
	"github.com/effects-run/effects/pkg/effects"
	"github.com/effects-run/effects/pkg/effects/dispatcher"
)

func main() {
	dispatcher.Main(effects.NewRegistry(), dispatcher.WithBuiltins())
}
