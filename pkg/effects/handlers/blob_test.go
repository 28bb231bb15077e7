package handlers

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	s3types "github.com/aws/aws-sdk-go-v2/service/s3/types"
	"github.com/johannesboyne/gofakes3"
	"github.com/johannesboyne/gofakes3/backend/s3mem"

	"github.com/effects-run/effects/pkg/effects"
)

// s3TestServer is gofakes3, an S3-protocol server, on a loopback HTTP port,
// with the given buckets. Its URL is the endpoint the handler is given.
func s3TestServer(t *testing.T, buckets ...string) *httptest.Server {
	t.Helper()
	backend := s3mem.New()
	for _, b := range buckets {
		if err := backend.CreateBucket(b); err != nil {
			t.Fatal(err)
		}
	}
	srv := httptest.NewServer(gofakes3.New(backend).Server())
	t.Cleanup(srv.Close)
	return srv
}

func testAWSConfig() *aws.Config {
	return &aws.Config{
		Region:      "eu-west-1",
		Credentials: credentials.NewStaticCredentialsProvider("test-access-key", "test-secret-key", ""),
	}
}

// s3Client is an SDK client of the test server, to read back what the
// handler wrote.
func s3Client(endpoint string) *s3.Client {
	return s3.NewFromConfig(*testAWSConfig(), func(o *s3.Options) {
		o.BaseEndpoint = aws.String(endpoint)
		o.UsePathStyle = true
	})
}

func newBlobHandler(t *testing.T, cfg BlobConfig) effects.HandlerFunc {
	t.Helper()
	if cfg.AWS == nil {
		cfg.AWS = testAWSConfig()
	}
	h, err := NewBlobPut(cfg)
	if err != nil {
		t.Fatalf("NewBlobPut: %v", err)
	}
	return h
}

func blobEffect(t *testing.T, payload map[string]any) effects.Effect {
	t.Helper()
	raw, err := json.Marshal(payload)
	if err != nil {
		t.Fatal(err)
	}
	return effects.Effect{ID: testEffectID, Kind: KindBlobPut, Payload: raw}
}

type readBack struct {
	body        string
	contentType string
	metadata    map[string]string
	etag        string
}

func getObject(t *testing.T, endpoint, bucket, key string) readBack {
	t.Helper()
	out, err := s3Client(endpoint).GetObject(t.Context(), &s3.GetObjectInput{Bucket: aws.String(bucket), Key: aws.String(key)})
	if err != nil {
		t.Fatalf("GetObject %s/%s: %v", bucket, key, err)
	}
	defer out.Body.Close()
	body, err := io.ReadAll(out.Body)
	if err != nil {
		t.Fatal(err)
	}
	return readBack{body: string(body), contentType: aws.ToString(out.ContentType), metadata: out.Metadata, etag: strings.Trim(aws.ToString(out.ETag), `"`)}
}

func TestBlobPutJSONBodyAndReadBack(t *testing.T) {
	t.Parallel()
	srv := s3TestServer(t, "reports")
	h := newBlobHandler(t, BlobConfig{Endpoint: srv.URL, Buckets: []string{"reports"}})

	payload := json.RawMessage(`{"bucket": "reports", "key": "2025/03/rates.json",
		"body": {"EURUSD": 1.08, "note": "ünïcödé"},
		"metadata": {"Source": "rates-job", "run": "42"}}`)
	out, err := h(t.Context(), effects.Effect{ID: testEffectID, Kind: KindBlobPut, Payload: payload})
	if err != nil {
		t.Fatalf("handler: %v", err)
	}
	res := out.(BlobResult)
	wantBody := `{"EURUSD": 1.08, "note": "ünïcödé"}`
	if res.Bucket != "reports" || res.Key != "2025/03/rates.json" || res.Size != int64(len(wantBody)) || res.ETag == "" || res.VersionID != nil {
		t.Errorf("completion = %s", completion(t, out))
	}
	got := getObject(t, srv.URL, "reports", "2025/03/rates.json")
	if got.body != wantBody {
		t.Errorf("stored body = %q, want %q", got.body, wantBody)
	}
	if got.contentType != "application/json" {
		t.Errorf("Content-Type = %q", got.contentType)
	}
	if got.metadata["source"] != "rates-job" || got.metadata["run"] != "42" {
		t.Errorf("metadata = %v", got.metadata)
	}
	if got.etag != res.ETag {
		t.Errorf("completion etag %q, stored %q", res.ETag, got.etag)
	}
	if c := completion(t, out); !strings.Contains(c, `"version_id":null`) {
		t.Errorf("completion = %s, want version_id null", c)
	}
}

func TestBlobPutBase64AndIdempotentOverwrite(t *testing.T) {
	t.Parallel()
	srv := s3TestServer(t, "uploads")
	h := newBlobHandler(t, BlobConfig{Endpoint: srv.URL, Buckets: []string{"uploads"}})
	data := []byte{0x89, 'P', 'N', 'G', 0, 1, 2, 0xff}
	e := blobEffect(t, map[string]any{
		"bucket": "uploads", "key": "img/a b+c.png", "content_type": "image/png",
		"body_base64": base64.StdEncoding.EncodeToString(data),
	})
	first, err := h(t.Context(), e)
	if err != nil {
		t.Fatalf("handler: %v", err)
	}
	// A re-run of the same effect writes the same object again.
	second, err := h(t.Context(), e)
	if err != nil {
		t.Fatalf("second run: %v", err)
	}
	if completion(t, first) != completion(t, second) {
		t.Errorf("re-run completion %s differs from %s", completion(t, second), completion(t, first))
	}
	got := getObject(t, srv.URL, "uploads", "img/a b+c.png")
	if got.body != string(data) || got.contentType != "image/png" {
		t.Errorf("stored %q as %q", got.body, got.contentType)
	}
	list, err := s3Client(srv.URL).ListObjectsV2(t.Context(), &s3.ListObjectsV2Input{Bucket: aws.String("uploads")})
	if err != nil {
		t.Fatal(err)
	}
	if len(list.Contents) != 1 {
		t.Errorf("the bucket holds %d objects, want 1", len(list.Contents))
	}
}

func TestBlobPutVersionID(t *testing.T) {
	t.Parallel()
	srv := s3TestServer(t, "versioned")
	_, err := s3Client(srv.URL).PutBucketVersioning(t.Context(), &s3.PutBucketVersioningInput{
		Bucket:                  aws.String("versioned"),
		VersioningConfiguration: &s3types.VersioningConfiguration{Status: s3types.BucketVersioningStatusEnabled},
	})
	if err != nil {
		t.Fatal(err)
	}
	h := newBlobHandler(t, BlobConfig{Endpoint: srv.URL, Buckets: []string{"versioned"}})
	out, err := h(t.Context(), blobEffect(t, map[string]any{"bucket": "versioned", "key": "k", "body": "v1"}))
	if err != nil {
		t.Fatalf("handler: %v", err)
	}
	if v := out.(BlobResult).VersionID; v == nil || *v == "" {
		t.Errorf("completion = %s, want a version_id", completion(t, out))
	}
}

func TestBlobPutBucketNotAllowed(t *testing.T) {
	t.Parallel()
	var requests atomic.Int32
	srv := s3TestServer(t, "reports", "secrets")
	counting := httptest.NewServer(countRequests(&requests, srv.URL))
	t.Cleanup(counting.Close)
	h := newBlobHandler(t, BlobConfig{Endpoint: counting.URL, Buckets: []string{"reports"}})
	_, err := h(t.Context(), blobEffect(t, map[string]any{"bucket": "secrets", "key": "k", "body": 1}))
	mustFail(t, err, true, `blob_put: bucket "secrets" is not in EFFECTS_S3_BUCKETS`)
	if n := requests.Load(); n != 0 {
		t.Errorf("the server saw %d requests; a refused bucket must not be contacted", n)
	}
}

func TestBlobPutOversizedBody(t *testing.T) {
	t.Parallel()
	var requests atomic.Int32
	srv := s3TestServer(t, "reports")
	counting := httptest.NewServer(countRequests(&requests, srv.URL))
	t.Cleanup(counting.Close)
	h := newBlobHandler(t, BlobConfig{Endpoint: counting.URL, Buckets: []string{"reports"}, MaxBytes: 10})
	if _, err := h(t.Context(), blobEffect(t, map[string]any{"bucket": "reports", "key": "ok", "body": "12345678"})); err != nil {
		t.Fatalf("10 bytes (with quotes): %v", err)
	}
	_, err := h(t.Context(), blobEffect(t, map[string]any{"bucket": "reports", "key": "big", "body": "123456789"}))
	mustFail(t, err, true, "blob_put: body is 11 bytes; EFFECTS_S3_MAX_BYTES allows 10")
	_, err = h(t.Context(), blobEffect(t, map[string]any{"bucket": "reports", "key": "big", "body_base64": base64.StdEncoding.EncodeToString(make([]byte, 11))}))
	mustFail(t, err, true, "blob_put: body is 11 bytes")
	if n := requests.Load(); n != 1 {
		t.Errorf("the server saw %d requests, want 1 (oversized bodies must not be sent)", n)
	}
}

func countRequests(n *atomic.Int32, target string) http.Handler {
	u, _ := url.Parse(target)
	proxy := httputil.NewSingleHostReverseProxy(u)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n.Add(1)
		proxy.ServeHTTP(w, r)
	})
}

// throttlingProxy stands in front of the S3 server and answers the first
// `times` PUTs with status and an S3 error code instead of passing them on.
func throttlingProxy(t *testing.T, target string, times int32, status int, code string, header http.Header) (*httptest.Server, *atomic.Int32) {
	t.Helper()
	u, err := url.Parse(target)
	if err != nil {
		t.Fatal(err)
	}
	proxy := httputil.NewSingleHostReverseProxy(u)
	var refused atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPut && refused.Load() < times {
			refused.Add(1)
			io.Copy(io.Discard, r.Body)
			for k, v := range header {
				w.Header()[k] = v
			}
			w.Header().Set("Content-Type", "application/xml")
			w.WriteHeader(status)
			io.WriteString(w, `<?xml version="1.0" encoding="UTF-8"?><Error><Code>`+code+`</Code><Message>Please reduce your request rate.</Message><RequestId>1</RequestId></Error>`)
			return
		}
		proxy.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	return srv, &refused
}

func TestBlobPutThrottledThenSucceeds(t *testing.T) {
	t.Parallel()
	srv := s3TestServer(t, "reports")
	proxy, refused := throttlingProxy(t, srv.URL, 1, http.StatusServiceUnavailable, "SlowDown", nil)
	h := newBlobHandler(t, BlobConfig{Endpoint: proxy.URL, Buckets: []string{"reports"}})
	e := blobEffect(t, map[string]any{"bucket": "reports", "key": "daily.json", "body": []int{1, 2, 3}})

	_, err := h(t.Context(), e)
	mustFail(t, err, false, "blob_put: PUT s3://reports/daily.json: status 503 Service Unavailable: SlowDown: Please reduce your request rate.")
	if n := refused.Load(); n != 1 {
		t.Fatalf("the proxy refused %d PUTs, want 1: the SDK must not retry on its own", n)
	}
	if _, err := h(t.Context(), e); err != nil { // the dispatcher's retry
		t.Fatalf("retry: %v", err)
	}
	if got := getObject(t, srv.URL, "reports", "daily.json"); got.body != "[1,2,3]" {
		t.Errorf("stored %q", got.body)
	}
}

func TestBlobPutErrorClasses(t *testing.T) {
	t.Parallel()
	srv := s3TestServer(t, "reports")
	for _, tc := range []struct {
		name      string
		status    int
		code      string
		header    http.Header
		permanent bool
		delay     time.Duration
	}{
		{"429", http.StatusTooManyRequests, "TooManyRequests", nil, false, 0},
		{"500", http.StatusInternalServerError, "InternalError", nil, false, 0},
		{"503 with Retry-After", http.StatusServiceUnavailable, "SlowDown", http.Header{"Retry-After": {"7"}}, false, 7 * time.Second},
		{"400 RequestTimeout", http.StatusBadRequest, "RequestTimeout", nil, false, 0},
		{"403", http.StatusForbidden, "AccessDenied", nil, true, 0},
		{"400", http.StatusBadRequest, "InvalidArgument", nil, true, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			proxy, _ := throttlingProxy(t, srv.URL, 1, tc.status, tc.code, tc.header)
			h := newBlobHandler(t, BlobConfig{Endpoint: proxy.URL, Buckets: []string{"reports"}})
			_, err := h(t.Context(), blobEffect(t, map[string]any{"bucket": "reports", "key": "k", "body": 1}))
			mustFail(t, err, tc.permanent, tc.code)
			if d, ok := effects.RetryDelay(err); ok != (tc.delay > 0) || d != tc.delay {
				t.Errorf("RetryDelay = %s, %v; want %s", d, ok, tc.delay)
			}
		})
	}
}

func TestBlobPutMissingBucketIsPermanent(t *testing.T) {
	t.Parallel()
	srv := s3TestServer(t) // allowed here, but the server has no such bucket
	h := newBlobHandler(t, BlobConfig{Endpoint: srv.URL, Buckets: []string{"reports"}})
	_, err := h(t.Context(), blobEffect(t, map[string]any{"bucket": "reports", "key": "k", "body": 1}))
	mustFail(t, err, true, "status 404", "NoSuchBucket")
}

func TestBlobPutServerDownIsRetried(t *testing.T) {
	t.Parallel()
	srv := s3TestServer(t)
	endpoint := srv.URL
	srv.Close()
	h := newBlobHandler(t, BlobConfig{Endpoint: endpoint, Buckets: []string{"reports"}})
	_, err := h(t.Context(), blobEffect(t, map[string]any{"bucket": "reports", "key": "k", "body": 1}))
	mustFail(t, err, false, "blob_put: PUT s3://reports/k")
}

func TestBlobPutShutdownKeepsTheCause(t *testing.T) {
	t.Parallel()
	arrived := make(chan struct{})
	release := make(chan struct{})
	hang := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		close(arrived)
		select {
		case <-r.Context().Done():
		case <-release:
		}
	}))
	t.Cleanup(hang.Close)
	t.Cleanup(func() { close(release) }) // runs before hang.Close
	h := newBlobHandler(t, BlobConfig{Endpoint: hang.URL, Buckets: []string{"reports"}})
	ctx, cancel := context.WithCancelCause(t.Context())
	stopped := errors.New("dispatcher stopping")
	go func() {
		<-arrived
		cancel(stopped)
	}()
	_, err := h(ctx, blobEffect(t, map[string]any{"bucket": "reports", "key": "k", "body": 1}))
	if err == nil || effects.IsPermanent(err) || !errors.Is(err, stopped) {
		t.Errorf("err = %v, want a retryable error with the context's cause", err)
	}
}

func TestBlobPutKeys(t *testing.T) {
	t.Parallel()
	for _, k := range []string{"a", "a/b/c.json", "a.b", "..a", "a..", "a/.b/c", "ünïcödé/ключ", "with space", strings.Repeat("k", 1024)} {
		if err := checkKey(k); err != nil {
			t.Errorf("checkKey(%q) = %v, want nil", k, err)
		}
	}
	for k, want := range map[string]string{
		"":                        "is empty",
		"/etc/passwd":             "starts with '/'",
		"../other-bucket/x":       `has a ".." segment`,
		"a/../../b":               `has a ".." segment`,
		"a/./b":                   `has a "." segment`,
		"..":                      `has a ".." segment`,
		"a//b":                    "empty segment",
		"dir/":                    "ends with '/'",
		`a\..\b`:                  "backslash",
		"a\x00b":                  "control character",
		"a\nb":                    "control character",
		"a\u0085b":                "control character",
		"\xff":                    "not valid UTF-8",
		strings.Repeat("k", 1025): "is 1025 bytes; S3 allows 1024",
	} {
		if err := checkKey(k); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("checkKey(%q) = %v, want one containing %q", k, err, want)
		}
	}
}

func TestBlobPutPayloadErrors(t *testing.T) {
	t.Parallel()
	h := newBlobHandler(t, BlobConfig{Endpoint: "http://127.0.0.1:1", Buckets: []string{"reports"}}) // never reached
	for _, tc := range []struct {
		name, payload, want string
	}{
		{"not JSON", `{"bucket": `, "payload is not valid JSON"},
		{"not an object", `"x"`, "payload must be a JSON object"},
		{"unknown field", `{"bucket": "reports", "key": "k", "body": 1, "Body": 2}`, `payload field "Body" is not known; the fields are bucket, key, body, body_base64, content_type, metadata`},
		{"no bucket", `{"key": "k", "body": 1}`, `payload field "bucket" is required`},
		{"bucket number", `{"bucket": 1, "key": "k", "body": 1}`, `payload field "bucket" must be a string`},
		{"no key", `{"bucket": "reports", "body": 1}`, `payload field "key" is required`},
		{"bad key", `{"bucket": "reports", "key": "../x", "body": 1}`, `payload field "key" "../x" has a ".." segment`},
		{"no body", `{"bucket": "reports", "key": "k"}`, `payload needs "body" (any JSON) or "body_base64"`},
		{"null body", `{"bucket": "reports", "key": "k", "body": null}`, `payload needs "body" (any JSON) or "body_base64"`},
		{"both bodies", `{"bucket": "reports", "key": "k", "body": 1, "body_base64": "AA=="}`, `both "body" and "body_base64"`},
		{"bad base64", `{"bucket": "reports", "key": "k", "body_base64": "not base64!"}`, `payload field "body_base64" is not standard base64`},
		{"base64 number", `{"bucket": "reports", "key": "k", "body_base64": 5}`, `payload field "body_base64" must be a string`},
		{"content type", `{"bucket": "reports", "key": "k", "body": 1, "content_type": "not a type"}`, `payload field "content_type" "not a type" is not a media type`},
		{"content type newline", `{"bucket": "reports", "key": "k", "body": 1, "content_type": "text/plain\r\nX-Amz-Acl: public-read"}`, `payload field "content_type"`},
		{"metadata not strings", `{"bucket": "reports", "key": "k", "body": 1, "metadata": {"a": 1}}`, `payload field "metadata" must be an object of strings`},
		{"metadata name", `{"bucket": "reports", "key": "k", "body": 1, "metadata": {"a b": "1"}}`, `"a b" is not a valid name`},
		{"metadata value", `{"bucket": "reports", "key": "k", "body": 1, "metadata": {"a": "x\ny"}}`, `the value of "a" must be printable ASCII`},
		{"metadata twice", `{"bucket": "reports", "key": "k", "body": 1, "metadata": {"a": "1", "A": "2"}}`, `sets "a" twice`},
		{"metadata size", `{"bucket": "reports", "key": "k", "body": 1, "metadata": {"a": "` + strings.Repeat("x", 2048) + `"}}`, `payload field "metadata" is 2049 bytes; S3 allows 2048`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			_, err := h(t.Context(), effects.Effect{ID: testEffectID, Kind: KindBlobPut, Payload: json.RawMessage(tc.payload)})
			mustFail(t, err, true, "blob_put: ", tc.want)
		})
	}
}

func TestNewBlobPutConfigErrors(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		cfg  BlobConfig
		want string
	}{
		{"bucket upper case", BlobConfig{Buckets: []string{"Reports"}}, `BlobConfig.Buckets (EFFECTS_S3_BUCKETS): bucket "Reports": want lower-case letters`},
		{"bucket short", BlobConfig{Buckets: []string{"ab"}}, `bucket "ab": want 3 to 63 characters`},
		{"bucket edge", BlobConfig{Buckets: []string{"-ab"}}, `bucket "-ab": want a letter or digit first and last`},
		{"endpoint scheme", BlobConfig{Buckets: []string{"abc"}, Endpoint: "minio:9000"}, "BlobConfig.Endpoint (EFFECTS_S3_ENDPOINT): want an http or https URL"},
		{"endpoint credentials", BlobConfig{Buckets: []string{"abc"}, Endpoint: "http://ak:sk@minio:9000"}, "credentials do not belong in the URL"},
		{"negative size", BlobConfig{Buckets: []string{"abc"}, MaxBytes: -1}, "BlobConfig.MaxBytes (EFFECTS_S3_MAX_BYTES) -1 is negative"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tc.cfg.AWS = testAWSConfig()
			_, err := NewBlobPut(tc.cfg)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("err = %v, want one containing %q", err, tc.want)
			}
			if err != nil && strings.Contains(err.Error(), "sk@") {
				t.Errorf("the error shows the credentials: %v", err)
			}
		})
	}
}

func TestBlobPutIsOptIn(t *testing.T) {
	t.Parallel()
	cfg, err := ConfigFromEnv(lookupIn(nil))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Blob.MaxBytes != DefaultS3MaxBytes || cfg.Blob.Timeout != DefaultS3Timeout {
		t.Errorf("defaults = %+v", cfg.Blob)
	}
	reg := effects.NewRegistry()
	if err := Register(reg, cfg); err != nil {
		t.Fatal(err)
	}
	if _, ok := reg.Lookup(KindBlobPut); ok {
		t.Error("blob_put is registered without EFFECTS_S3_BUCKETS")
	}

	cfg, err = ConfigFromEnv(lookupIn(map[string]string{
		EnvS3Buckets:  "reports, uploads",
		EnvS3Endpoint: "http://127.0.0.1:9000",
		EnvS3MaxBytes: "1024",
		EnvS3Timeout:  "5s",
	}))
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(cfg.Blob.Buckets, " ") != "reports uploads" || cfg.Blob.Endpoint != "http://127.0.0.1:9000" ||
		cfg.Blob.MaxBytes != 1024 || cfg.Blob.Timeout != 5*time.Second {
		t.Errorf("Blob config = %+v", cfg.Blob)
	}
	cfg.Blob.AWS = testAWSConfig() // not the machine's AWS settings
	reg = effects.NewRegistry()
	if err := Register(reg, cfg); err != nil {
		t.Fatal(err)
	}
	if _, ok := reg.Lookup(KindBlobPut); !ok {
		t.Errorf("blob_put is not registered with EFFECTS_S3_BUCKETS; kinds %q", reg.Kinds())
	}
}

func TestBlobConfigFromEnvErrors(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		env  map[string]string
		want string
	}{
		{map[string]string{EnvS3Endpoint: "http://minio:9000"}, "EFFECTS_S3_ENDPOINT is set but EFFECTS_S3_BUCKETS is not"},
		{map[string]string{EnvS3Buckets: "Bad_Bucket"}, "EFFECTS_S3_BUCKETS"},
		{map[string]string{EnvS3Buckets: "reports", EnvS3MaxBytes: "0"}, "EFFECTS_S3_MAX_BYTES=0: want a positive number of bytes"},
		{map[string]string{EnvS3Buckets: "reports", EnvS3MaxBytes: "1MB"}, `EFFECTS_S3_MAX_BYTES="1MB"`},
		{map[string]string{EnvS3Buckets: "reports", EnvS3Timeout: "0s"}, `EFFECTS_S3_TIMEOUT="0s"`},
		{map[string]string{EnvS3Buckets: "reports", EnvS3Endpoint: "ftp://x"}, "EFFECTS_S3_ENDPOINT"},
	} {
		_, err := ConfigFromEnv(lookupIn(tc.env))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("ConfigFromEnv(%v) err = %v, want one containing %q", tc.env, err, tc.want)
		}
	}
}
