package main

import (
	"io"
	"net"
	"net/http/httptest"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/emersion/go-smtp"
	"github.com/johannesboyne/gofakes3"
	"github.com/johannesboyne/gofakes3/backend/s3mem"

	"github.com/effects-run/effects/internal/controlkv/controlkvtest"
	"github.com/effects-run/effects/internal/testenv"
	"github.com/effects-run/effects/pkg/effects"
)

// TestOptInBuiltins runs the dispatcher binary with and without the email
// and blob_put settings: without them the kinds have no consumer; with them
// an email reaches a real SMTP server and a blob an S3-protocol server, and
// both complete.
func TestOptInBuiltins(t *testing.T) {
	t.Parallel()
	n := testenv.StartNATS(t)
	controlkvtest.Bucket(t, n) // as completer migrate makes it
	_, js := n.Connect(t)
	base := map[string]string{"NATS_URL": n.URL, "EFFECTS_ADMIN_ADDR": "127.0.0.1:0"}

	p := testenv.StartProcess(t, selector, base)
	waitReady(t, p, "http://"+p.LoopbackAddr(t, "starting", "admin_addr"))
	for _, kind := range []string{"email", "blob_put"} {
		if ci := consumerInfo(t, js, kind); ci != nil {
			t.Errorf("a dispatcher without settings consumes %s", kind)
		}
	}
	stop(t, p)

	mails := startSMTPServer(t)
	bucket := s3mem.New()
	if err := bucket.CreateBucket("reports"); err != nil {
		t.Fatal(err)
	}
	s3srv := httptest.NewServer(gofakes3.New(bucket).Server())
	t.Cleanup(s3srv.Close)

	p = testenv.StartProcess(t, selector, testenv.MergeEnv(base, map[string]string{
		"EFFECTS_SMTP_URL":   "smtp://" + mails.addr + "?tls=none",
		"EFFECTS_EMAIL_FROM": "Effects <noreply@example.com>",
		"EFFECTS_S3_BUCKETS": "reports",
		// Not the machine's AWS settings, whatever they are.
		"EFFECTS_S3_ENDPOINT":         s3srv.URL,
		"AWS_ACCESS_KEY_ID":           "test-access-key",
		"AWS_SECRET_ACCESS_KEY":       "test-secret-key",
		"AWS_REGION":                  "eu-west-1",
		"AWS_CONFIG_FILE":             "/nonexistent",
		"AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
		"AWS_EC2_METADATA_DISABLED":   "true",
	}))
	waitReady(t, p, "http://"+p.LoopbackAddr(t, "starting", "admin_addr"))

	mail := publishEffect(t, js, "email", `{"to": ["ann@example.com"], "subject": "Hello", "text": "Hi Ann"}`)
	blob := publishEffect(t, js, "blob_put", `{"bucket": "reports", "key": "a/b.json", "body": {"x": 1}}`)
	for kind, eff := range map[string]published{"email": mail, "blob_put": blob} {
		var comp *effects.Completion
		p.WaitFor(t, "the "+kind+" completion", func() bool {
			comp = lastCompletion(t, js, kind)
			return comp != nil && comp.EffectID == eff.id
		})
		if comp.Status != effects.StatusSucceeded {
			t.Errorf("%s: %+v, error %v\n%s", kind, comp, strDeref(comp.Error), p.Output())
		}
		if kind == "email" && string(comp.Completion) != `{"message_id":"`+mail.id+`@example.com","accepted":["ann@example.com"]}` {
			t.Errorf("email completion = %s", comp.Completion)
		}
		if kind == "blob_put" && !strings.HasPrefix(string(comp.Completion), `{"bucket":"reports","key":"a/b.json","etag":"`) {
			t.Errorf("blob_put completion = %s", comp.Completion)
		}
	}
	select {
	case data := <-mails.got:
		if !strings.Contains(data, "Message-ID: <"+mail.id+"@example.com>") || !strings.Contains(data, "Hi Ann") {
			t.Errorf("the server received:\n%s", data)
		}
	case <-time.After(10 * time.Second):
		t.Error("the SMTP server received nothing")
	}
	out, err := s3.NewFromConfig(aws.Config{
		Region:      "eu-west-1",
		Credentials: credentials.NewStaticCredentialsProvider("test-access-key", "test-secret-key", ""),
	}, func(o *s3.Options) { o.BaseEndpoint = aws.String(s3srv.URL); o.UsePathStyle = true }).
		GetObject(t.Context(), &s3.GetObjectInput{Bucket: aws.String("reports"), Key: aws.String("a/b.json")})
	if err != nil {
		t.Fatalf("read back: %v", err)
	}
	body, _ := io.ReadAll(out.Body)
	out.Body.Close()
	if string(body) != `{"x": 1}` {
		t.Errorf("stored %q", body)
	}
	stop(t, p)
}

func stop(t *testing.T, p *testenv.Process) {
	t.Helper()
	p.Signal(t, syscall.SIGTERM)
	if code := p.Wait(t); code != 0 {
		t.Fatalf("exit %d after SIGTERM, want 0\n%s", code, p.Output())
	}
}

func strDeref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}

// smtpSink is a real SMTP server (emersion/go-smtp) that accepts every
// message and hands its data to got.
type smtpSink struct {
	addr string
	got  chan string
}

func startSMTPServer(t *testing.T) *smtpSink {
	t.Helper()
	sink := &smtpSink{got: make(chan string, 4)}
	srv := smtp.NewServer(smtp.BackendFunc(func(*smtp.Conn) (smtp.Session, error) { return sinkSession{sink}, nil }))
	srv.Domain = "mx.test"
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	sink.addr = l.Addr().String()
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(l)
	}()
	t.Cleanup(func() {
		srv.Close()
		l.Close() // in case Close came before Serve registered l
		<-done
	})
	return sink
}

type sinkSession struct{ sink *smtpSink }

func (sinkSession) Mail(string, *smtp.MailOptions) error { return nil }
func (sinkSession) Rcpt(string, *smtp.RcptOptions) error { return nil }
func (s sinkSession) Data(r io.Reader) error {
	data, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	s.sink.got <- string(data)
	return nil
}
func (sinkSession) Reset()        {}
func (sinkSession) Logout() error { return nil }
