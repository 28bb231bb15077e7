package controlkv_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/effects-run/effects/internal/controlkv"
	"github.com/effects-run/effects/internal/testenv"
	"github.com/effects-run/effects/pkg/effects"
)

func TestParseKey(t *testing.T) {
	id := "6f1c2a3b-0000-4000-8000-000000000001"
	for key, want := range map[string]controlkv.Key{
		controlkv.PausedKey("send_email"):        {Type: controlkv.Paused, Kind: "send_email"},
		controlkv.CancelledKey("send_email", id): {Type: controlkv.Cancelled, Kind: "send_email", ID: id},
		controlkv.SyncedKey:                      {Type: controlkv.Synced},
		"paused.":                                {},
		"paused.not.a.kind":                      {},
		"cancelled.send_email":                   {},
		"cancelled.send_email.not-an-id":         {},
		"cancelled.bad kind." + id:               {},
		"something.else":                         {},
	} {
		if got := controlkv.ParseKey(key); got != want {
			t.Errorf("ParseKey(%q) = %+v, want %+v", key, got, want)
		}
	}
}

func TestMarkEncodesEqualMarksEqually(t *testing.T) {
	at := time.Date(2026, 3, 14, 9, 26, 53, 589793123, time.FixedZone("x", 3600))
	a := controlkv.Mark{By: "alice", At: at}.Encode()
	b := controlkv.Mark{By: "alice", At: at.UTC().Truncate(time.Microsecond)}.Encode()
	if string(a) != string(b) {
		t.Fatalf("%s != %s", a, b)
	}
	m, err := controlkv.DecodeMark(a)
	if err != nil || m.By != "alice" || !m.At.Equal(at.Truncate(time.Microsecond)) {
		t.Fatalf("DecodeMark: %+v, %v", m, err)
	}
	if _, err := controlkv.DecodeMark([]byte("not json")); err == nil {
		t.Fatal("DecodeMark took a value that is not a Mark")
	}
}

// watcher is a consumer of the bucket as a dispatcher makes one, which the
// test acks by hand.
func watcher(t *testing.T, js jetstream.JetStream, name string, inactive time.Duration) jetstream.Consumer {
	t.Helper()
	c, err := js.CreateConsumer(context.Background(), controlkv.Stream, jetstream.ConsumerConfig{
		Name: name, AckPolicy: jetstream.AckExplicitPolicy, DeliverPolicy: jetstream.DeliverLastPerSubjectPolicy,
		FilterSubject: "$KV." + controlkv.Bucket + ".>", InactiveThreshold: inactive,
	})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func ackNext(t *testing.T, c jetstream.Consumer) {
	t.Helper()
	m, err := c.Next()
	if err != nil {
		t.Fatal(err)
	}
	if err := m.DoubleAck(context.Background()); err != nil {
		t.Fatal(err)
	}
}

// Confirm waits for every dispatcher's watcher to ack the revision, names
// the ones that do not, ignores other consumers, and after a watcher that
// vanished unconfirmed waits StaleAfter more.
func TestConfirm(t *testing.T) {
	n := testenv.StartNATS(t)
	_, js := n.Connect(t)
	ctx := context.Background()
	kv, err := js.CreateKeyValue(ctx, controlkv.Config(effects.StreamOptions{}))
	if err != nil {
		t.Fatal(err)
	}
	// A bucket younger than StaleAfter is waited for until it is that old.
	began := time.Now()
	if _, err := controlkv.Confirm(ctx, js, 0); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(began); took < controlkv.StaleAfter-time.Second {
		t.Fatalf("a new bucket was confirmed after %s", took)
	}

	rev, err := kv.Put(ctx, controlkv.PausedKey("mail"), controlkv.Mark{At: time.Now()}.Encode())
	if err != nil {
		t.Fatal(err)
	}
	w := watcher(t, js, controlkv.WatcherPrefix+"a", time.Hour)
	watcher(t, js, "someone-else", time.Hour) // never acks; not a dispatcher's
	short, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
	defer cancel()
	conf, err := controlkv.Confirm(short, js, rev)
	if !errors.Is(err, controlkv.ErrNotConfirmed) || len(conf.Waiting) != 1 || !strings.HasPrefix(conf.Waiting[0], controlkv.WatcherPrefix+"a") {
		t.Fatalf("unacked: %+v, %v", conf, err)
	}
	ackNext(t, w)
	if conf, err := controlkv.Confirm(ctx, js, rev); err != nil || conf.Confirmed != 1 || len(conf.Waiting) != 0 {
		t.Fatalf("acked: %+v, %v", conf, err)
	}

	// A watcher that vanishes without acking (the server removes this one
	// a second after its creation, as it does a dead dispatcher's): its
	// dispatcher may trust its copy for StaleAfter more.
	rev, err = kv.Put(ctx, controlkv.PausedKey("sms"), controlkv.Mark{At: time.Now()}.Encode())
	if err != nil {
		t.Fatal(err)
	}
	ackNext(t, w) // "a" confirms
	watcher(t, js, controlkv.WatcherPrefix+"b", time.Second)
	began = time.Now()
	conf, err = controlkv.Confirm(ctx, js, rev)
	if err != nil || len(conf.Waiting) != 0 {
		t.Fatalf("vanished: %+v, %v", conf, err)
	}
	if _, err := js.Consumer(ctx, controlkv.Stream, controlkv.WatcherPrefix+"b"); !errors.Is(err, jetstream.ErrConsumerNotFound) {
		t.Fatalf("the watcher that never pulled is still there: %v", err)
	}
	if took := time.Since(began); took < controlkv.StaleAfter {
		t.Fatalf("confirmed %s after a watcher vanished, want at least %s", took, controlkv.StaleAfter)
	}
}

// FuzzControlKey: a key or value of the bucket, as anyone allowed to
// publish on $KV.EFFECTS_CONTROL.> may write it, never crashes a
// dispatcher, and what it accepts names a valid kind and effect id and is
// the key its writers make.
func FuzzControlKey(f *testing.F) {
	for _, s := range []string{controlkv.PausedKey("mail"), controlkv.CancelledKey("mail", "6f1c2a3b-0000-4000-8000-000000000001"),
		controlkv.SyncedKey, "paused.", "cancelled..", "cancelled.a.b.c", `{"by":"x","at":"2026-03-14T09:26:53Z"}`, `{"at":1}`} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		k := controlkv.ParseKey(s)
		switch k.Type {
		case controlkv.Paused:
			if effects.ValidateKind(k.Kind) != nil || controlkv.PausedKey(k.Kind) != s {
				t.Fatalf("ParseKey(%q) = %+v", s, k)
			}
		case controlkv.Cancelled:
			if effects.ValidateKind(k.Kind) != nil || !effects.IsUUID(k.ID) || controlkv.CancelledKey(k.Kind, k.ID) != s {
				t.Fatalf("ParseKey(%q) = %+v", s, k)
			}
		case controlkv.Synced:
			if s != controlkv.SyncedKey {
				t.Fatalf("ParseKey(%q) = %+v", s, k)
			}
		}
		if m, err := controlkv.DecodeMark([]byte(s)); err == nil {
			if again, err := controlkv.DecodeMark(m.Encode()); err != nil || again.By != m.By || !again.At.Equal(m.At.Truncate(time.Microsecond)) {
				t.Fatalf("DecodeMark(%q) = %+v; encoded and decoded again %+v, %v", s, m, again, err)
			}
		} else if len(err.Error()) > 1024 {
			t.Fatalf("DecodeMark of %d bytes: a %d-byte error", len(s), len(err.Error()))
		}
	})
}
