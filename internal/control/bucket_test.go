package control_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/effects-run/effects/internal/controlkv"
	"github.com/effects-run/effects/internal/testenv"
	"github.com/effects-run/effects/pkg/effects/dispatcher"
)

func consumerInfo(t *testing.T, js jetstream.JetStream, name string) *jetstream.ConsumerInfo {
	t.Helper()
	c, err := js.Consumer(context.Background(), "EFFECTS", name)
	if err != nil {
		t.Fatal(err)
	}
	info, err := c.Info(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return info
}

// The bucket deleted by hand: dispatchers stop starting effects of every
// kind and say why, until the bucket is filled again from PostgreSQL,
// whereupon the pause holds as before.
func TestBucketDeletedIsFilledAgainFromPostgres(t *testing.T) {
	e := setupWith(t, false) // the test runs the syncer itself
	p := e.dispatcher(e.registry("mail", "other"))
	e.pauseOK("alice", "mail")
	held := []string{e.insert("mail")}
	e.assertHeldBack(held, "other")

	if err := e.js.DeleteKeyValue(context.Background(), controlkv.Bucket); err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, 30*time.Second, "the dispatcher to say it cannot read the controls", func() bool {
		err := p.d.Ready(context.Background())
		return err != nil && strings.Contains(err.Error(), "operator controls unknown") &&
			p.metric(t, "effects_control_up") == 0
	})
	// An effect of a kind that is not paused reaches the dispatcher and
	// waits there: it cannot know the kind is not paused.
	other := e.insert("other")
	testenv.WaitFor(t, 30*time.Second, "the other kind's effect delivered", func() bool {
		return consumerInfo(t, e.js, dispatcher.ConsumerName("other")).NumAckPending == 1
	})
	if n := e.runs.count(other); n != 0 || e.row(other).Status != "pending" {
		t.Fatalf("an effect ran while the controls were unknown (%d runs)", n)
	}

	res := e.sync()
	if !res.Created || res.Written != 2 { // paused.mail, synced
		t.Fatalf("sync %+v", res)
	}
	testenv.WaitFor(t, 30*time.Second, "the dispatcher ready again", func() bool {
		return p.d.Ready(context.Background()) == nil && p.metric(t, "effects_control_up") == 1
	})
	e.assertRanOnce([]string{other})
	e.assertHeldBack(held, "other")
	if v := p.metric(t, "effects_kind_paused", "kind", "mail"); v != 1 {
		t.Fatalf("effects_kind_paused{kind=mail} = %v after the bucket came back", v)
	}

	// Nothing to repair now.
	if res := e.sync(); res.Repaired() {
		t.Fatalf("a second sync repaired %+v", res)
	}
	e.resumeOK("", "mail")
	e.assertRanOnce(held)
}

// A control that finds the bucket gone fills it again from PostgreSQL
// itself, with its own change.
func TestControlFillsMissingBucket(t *testing.T) {
	e := setupWith(t, false)
	p := e.dispatcher(e.registry("mail", "sms", "other"))
	e.pauseOK("", "mail")
	if err := e.js.DeleteKeyValue(context.Background(), controlkv.Bucket); err != nil {
		t.Fatal(err)
	}
	rep := e.pauseOK("", "sms")
	if rep.Dispatchers != 1 {
		t.Fatalf("report %+v", rep)
	}
	for _, kind := range []string{"mail", "sms"} {
		if v := p.metric(t, "effects_kind_paused", "kind", kind); v != 1 {
			t.Fatalf("effects_kind_paused{kind=%s} = %v", kind, v)
		}
	}
	e.assertHeldBack([]string{e.insert("mail"), e.insert("sms")}, "other")
}

// A bucket that says more or less than PostgreSQL is corrected: a pause
// removed by hand comes back, one added by hand goes.
func TestSyncCorrectsTheBucket(t *testing.T) {
	e := setupWith(t, false)
	e.pauseOK("", "mail")
	kv, err := e.js.KeyValue(context.Background(), controlkv.Bucket)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := kv.Delete(ctx, controlkv.PausedKey("mail")); err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Put(ctx, controlkv.PausedKey("sms"), controlkv.Mark{By: "nobody", At: time.Now()}.Encode()); err != nil {
		t.Fatal(err)
	}
	if res := e.sync(); res.Written != 1 || res.Removed != 1 {
		t.Fatalf("sync %+v", res)
	}
	if _, err := kv.Get(ctx, controlkv.PausedKey("mail")); err != nil {
		t.Fatalf("paused.mail: %v", err)
	}
	if _, err := kv.Get(ctx, controlkv.PausedKey("sms")); err == nil {
		t.Fatal("paused.sms is still there")
	}
}

// A dispatcher stopped while it cannot read the controls starts nothing,
// and gives back what its kind's consumer holds when the consumer's pull
// requests are over: its workers do not take it only to nak it while those
// could deliver it again at once, round after round, each an attempt used
// up unrun. The one a worker held may come back once into the reader
// before its pull requests end (it is given back with the rest).
func TestStopWhileTheControlsAreUnknownGivesBackOnce(t *testing.T) {
	e := setupWith(t, false) // the test runs the syncer itself
	p := e.dispatcher(e.registry("mail", "other"))
	if err := e.js.DeleteKeyValue(context.Background(), controlkv.Bucket); err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, 30*time.Second, "the dispatcher to say it cannot read the controls", func() bool {
		return p.d.Ready(context.Background()) != nil
	})
	id := e.insert("mail")
	consumer := dispatcher.ConsumerName("mail")
	testenv.WaitFor(t, 30*time.Second, "the effect pulled ahead", func() bool {
		return consumerInfo(t, e.js, consumer).Delivered.Consumer == 1
	})
	p.stop()
	if info := consumerInfo(t, e.js, consumer); info.Delivered.Consumer > 2 || info.NumWaiting != 0 {
		t.Fatalf("after the stop: %d deliveries, %d pull requests waiting; want at most 2 and none", info.Delivered.Consumer, info.NumWaiting)
	}
	if n := e.runs.count(id); n != 0 {
		t.Fatalf("ran %d times while the controls were unknown", n)
	}

	e.sync()
	e.dispatcher(e.registry("mail", "other"))
	e.assertRanOnce([]string{id})
}
