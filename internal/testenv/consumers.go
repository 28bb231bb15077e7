package testenv

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// ConsumerDir is where the server keeps a durable consumer of the global
// account on disk.
func (n *NATS) ConsumerDir(stream, consumer string) string {
	return filepath.Join(n.opts.StoreDir, "jetstream", "$G", "streams", stream, "obs", consumer)
}

// ConsumerStored reports whether the consumer's directory holds its
// metadata: a consumer without it lives only in the server's memory, and
// is gone after the server's next restart.
func (n *NATS) ConsumerStored(stream, consumer string) bool {
	_, err := os.Stat(filepath.Join(n.ConsumerDir(stream, consumer), "meta.inf"))
	return err == nil
}

// LoseConsumerStore removes a consumer's directory while the server is
// down (between [NATS.Shutdown] and [NATS.Start]): the server comes back
// without the consumer, as after a store lost or a consumer that was never
// stored.
func (n *NATS) LoseConsumerStore(t testing.TB, stream, consumer string) {
	t.Helper()
	dir := n.ConsumerDir(stream, consumer)
	if _, err := os.Stat(dir); err != nil {
		t.Fatalf("consumer %s on %s: %v", consumer, stream, err)
	}
	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
}

// LeaveConsumerUnstored makes the consumer cfg on stream (deleted first if
// it exists) one that
// nats-server 2.15.3 keeps in memory without its directory: it deletes the
// consumer while creating it again and again from another connection, until
// a create lands after the server dropped the old consumer from memory and
// before it removed the old directory (which then takes the new consumer's
// directory with it). Every later update of the consumer fails with
// err_code 10012, and the consumer is gone after a restart. The race is won
// in most tries; it fails the test after 50.
func LeaveConsumerUnstored(t testing.TB, n *NATS, js jetstream.JetStream, stream string, cfg jetstream.ConsumerConfig) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	_, creator := n.Connect(t)
	for range 50 {
		if err := js.DeleteConsumer(ctx, stream, cfg.Durable); err != nil && !errors.Is(err, jetstream.ErrConsumerNotFound) {
			t.Fatal(err)
		}
		if _, err := js.CreateConsumer(ctx, stream, cfg); err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		deleted := make(chan struct{})
		wg.Go(func() {
			for {
				select {
				case <-deleted:
					return
				default:
				}
				_, _ = creator.CreateConsumer(ctx, stream, cfg)
			}
		})
		time.Sleep(2 * time.Millisecond) // the creates are under way
		err := js.DeleteConsumer(ctx, stream, cfg.Durable)
		time.Sleep(2 * time.Millisecond) // and go on a moment after
		close(deleted)
		wg.Wait()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := js.Consumer(ctx, stream, cfg.Durable); err == nil && !n.ConsumerStored(stream, cfg.Durable) {
			return
		}
	}
	t.Fatalf("consumer %s on %s: could not make the server lose its directory in 50 tries", cfg.Durable, stream)
}
