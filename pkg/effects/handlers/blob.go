package handlers

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"mime"
	"net/http"
	"slices"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/aws/aws-sdk-go-v2/aws"
	awsconfig "github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/smithy-go"
	smithyhttp "github.com/aws/smithy-go/transport/http"

	"github.com/effects-run/effects/internal/envconfig"
	"github.com/effects-run/effects/pkg/effects"
)

// KindBlobPut is the kind of the blob_put handler.
const KindBlobPut = "blob_put"

// The environment variables of the blob_put handler, read by [ConfigFromEnv].
// Region and credentials come from the AWS SDK's standard chain (AWS_REGION,
// AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, AWS_PROFILE, web identity,
// the EC2/ECS metadata services).
const (
	// EnvS3Buckets lists the buckets a row may write to, comma-separated.
	// Default: empty, which leaves blob_put unregistered.
	EnvS3Buckets = "EFFECTS_S3_BUCKETS"
	// EnvS3Endpoint is the URL of an S3-compatible server. Default: empty,
	// AWS S3 itself.
	EnvS3Endpoint = "EFFECTS_S3_ENDPOINT"
	// EnvS3MaxBytes is the largest object body. Default: 524288.
	EnvS3MaxBytes = "EFFECTS_S3_MAX_BYTES"
	// EnvS3Timeout bounds one write. Default: 30s.
	EnvS3Timeout = "EFFECTS_S3_TIMEOUT"
)

// Defaults of [BlobConfig].
const (
	// DefaultS3MaxBytes is the ingest's default payload limit
	// (EFFECTS_MAX_PAYLOAD_BYTES): a body cannot be longer than the payload
	// that carries it, and a body_base64 of this size is already 4/3 of it.
	DefaultS3MaxBytes = 512 << 10
	DefaultS3Timeout  = 30 * time.Second
)

const (
	// maxKeyBytes is S3's limit on a key.
	maxKeyBytes = 1024
	// maxMetadataBytes is S3's limit on user metadata, names and values.
	maxMetadataBytes = 2 << 10
)

// BlobConfig configures the blob_put handler.
type BlobConfig struct {
	// Buckets lists the buckets a payload may name. Empty allows none, and
	// [Register] then leaves blob_put unregistered. From EFFECTS_S3_BUCKETS.
	Buckets []string
	// Endpoint is the base URL of an S3-compatible server
	// ("http://minio:9000"); its buckets are addressed by path
	// (endpoint/bucket/key). Empty: AWS S3, addressed the AWS way. From
	// EFFECTS_S3_ENDPOINT.
	Endpoint string
	// MaxBytes is the largest body written. Default: 512 KiB. From
	// EFFECTS_S3_MAX_BYTES.
	MaxBytes int64
	// Timeout bounds one write. Default: 30s. From EFFECTS_S3_TIMEOUT.
	Timeout time.Duration
	// AWS is the SDK configuration (region, credentials, HTTP client).
	// Default: the SDK's standard chain (config.LoadDefaultConfig), region
	// us-east-1 when the chain names none and Endpoint is set.
	AWS *aws.Config
}

// WithDefaults returns a copy of c with every zero field set to its default.
func (c BlobConfig) WithDefaults() BlobConfig {
	if c.MaxBytes == 0 {
		c.MaxBytes = DefaultS3MaxBytes
	}
	if c.Timeout == 0 {
		c.Timeout = DefaultS3Timeout
	}
	return c
}

// BlobResult is the completion of a stored blob:
//
//	{"bucket": "reports", "key": "2025/03/rates.json", "etag": "9b2cf535f27731c974343645a3985328",
//	 "size": 1024, "version_id": null}
//
// ETag is without its quotes; VersionID is null unless the bucket is
// versioned.
type BlobResult struct {
	Bucket    string  `json:"bucket"`
	Key       string  `json:"key"`
	ETag      string  `json:"etag"`
	Size      int64   `json:"size"`
	VersionID *string `json:"version_id"`
}

func blobConfigFromEnv(r *envconfig.Reader) BlobConfig {
	return BlobConfig{
		Buckets:  r.List(EnvS3Buckets),
		Endpoint: r.String(EnvS3Endpoint, ""),
		MaxBytes: int64(r.Int(EnvS3MaxBytes, DefaultS3MaxBytes)),
		Timeout:  r.Duration(EnvS3Timeout, DefaultS3Timeout),
	}
}

// checkBlobConfig checks the blob_put settings read from the environment;
// the error names the variable.
func checkBlobConfig(c BlobConfig) error {
	if len(c.Buckets) == 0 {
		if c.Endpoint != "" {
			return fmt.Errorf("%s is set but %s is not: list the buckets rows may write to", EnvS3Endpoint, EnvS3Buckets)
		}
		return nil
	}
	if c.MaxBytes <= 0 {
		return fmt.Errorf("%s=%d: want a positive number of bytes", EnvS3MaxBytes, c.MaxBytes)
	}
	if c.Timeout <= 0 {
		return fmt.Errorf("%s=%q: want a positive duration such as 30s", EnvS3Timeout, c.Timeout)
	}
	_, err := c.validate()
	return err
}

func (c BlobConfig) validate() (map[string]bool, error) {
	if c.MaxBytes < 0 {
		return nil, fmt.Errorf("handlers: BlobConfig.MaxBytes (%s) %d is negative", EnvS3MaxBytes, c.MaxBytes)
	}
	if c.Timeout < 0 {
		return nil, fmt.Errorf("handlers: BlobConfig.Timeout (%s) %s is negative", EnvS3Timeout, c.Timeout)
	}
	buckets := make(map[string]bool, len(c.Buckets))
	for _, b := range c.Buckets {
		b = strings.TrimSpace(b)
		if err := checkBucketName(b); err != nil {
			return nil, fmt.Errorf("handlers: BlobConfig.Buckets (%s): %w", EnvS3Buckets, err)
		}
		buckets[b] = true
	}
	if c.Endpoint != "" {
		if err := checkEndpoint(c.Endpoint); err != nil {
			return nil, fmt.Errorf("handlers: BlobConfig.Endpoint (%s): %w", EnvS3Endpoint, err)
		}
	}
	return buckets, nil
}

// checkBucketName accepts S3's bucket names: 3 to 63 lower-case letters,
// digits, '.' and '-', starting and ending with a letter or digit.
func checkBucketName(b string) error {
	if len(b) < 3 || len(b) > 63 {
		return fmt.Errorf("bucket %q: want 3 to 63 characters", b)
	}
	for i := 0; i < len(b); i++ {
		c := b[i]
		if !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '.' || c == '-') {
			return fmt.Errorf("bucket %q: want lower-case letters, digits, '.' and '-'", b)
		}
	}
	if !isAlnum(b[0]) || !isAlnum(b[len(b)-1]) {
		return fmt.Errorf("bucket %q: want a letter or digit first and last", b)
	}
	return nil
}

func isAlnum(c byte) bool { return 'a' <= c && c <= 'z' || '0' <= c && c <= '9' }

func checkEndpoint(s string) error {
	u, err := parseURLField(json.RawMessage(mustQuote(s)))
	if err != nil {
		return errors.New("want an http or https URL such as http://minio:9000")
	}
	if u.User != nil {
		return errors.New("credentials do not belong in the URL; use AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")
	}
	return nil
}

func mustQuote(s string) []byte {
	b, _ := json.Marshal(s) // cannot fail for a string
	return b
}

type blobWriter struct {
	client   *s3.Client
	buckets  map[string]bool
	maxBytes int64
	timeout  time.Duration
}

// NewBlobPut returns the "blob_put" handler. The package documentation
// describes its payload, completion and outcomes. The error reports a
// configuration that is not valid, or an AWS configuration the SDK could not
// load (a broken AWS_PROFILE, say).
func NewBlobPut(cfg BlobConfig) (effects.HandlerFunc, error) {
	cfg = cfg.WithDefaults()
	buckets, err := cfg.validate()
	if err != nil {
		return nil, err
	}
	var awsCfg aws.Config
	if cfg.AWS != nil {
		awsCfg = cfg.AWS.Copy()
	} else {
		// Loads settings and finds credentials lazily: no network here.
		awsCfg, err = awsconfig.LoadDefaultConfig(context.Background())
		if err != nil {
			return nil, fmt.Errorf("handlers: blob_put: loading the AWS configuration: %w", err)
		}
	}
	if awsCfg.Region == "" && cfg.Endpoint != "" {
		// S3-compatible servers ignore the region, but SigV4 needs one.
		awsCfg.Region = "us-east-1"
	}
	client := s3.NewFromConfig(awsCfg, func(o *s3.Options) {
		// One place decides retries: the dispatcher, with its backoff,
		// attempt limit and the row's attempt count. The SDK's own
		// retries would multiply them and hide throttling from the row.
		o.Retryer = aws.NopRetryer{}
		if cfg.Endpoint != "" {
			o.BaseEndpoint = aws.String(cfg.Endpoint)
			// Most S3-compatible servers serve buckets by path only.
			o.UsePathStyle = true
		}
	})
	w := &blobWriter{client: client, buckets: buckets, maxBytes: cfg.MaxBytes, timeout: cfg.Timeout}
	return w.handle, nil
}

func (w *blobWriter) handle(ctx context.Context, e effects.Effect) (any, error) {
	p, err := parseBlobPayload(e.Payload)
	if err != nil {
		return nil, effects.Permanent(err)
	}
	if !w.buckets[p.bucket] {
		if len(w.buckets) == 0 {
			return nil, effects.Permanent(fmt.Errorf("blob_put: bucket %q is not in %s (it is empty, so no bucket is allowed)", p.bucket, EnvS3Buckets))
		}
		return nil, effects.Permanent(fmt.Errorf("blob_put: bucket %q is not in %s", p.bucket, EnvS3Buckets))
	}
	if int64(len(p.body)) > w.maxBytes {
		return nil, effects.Permanent(fmt.Errorf("blob_put: body is %d bytes; %s allows %d", len(p.body), EnvS3MaxBytes, w.maxBytes))
	}

	ctx, cancel := context.WithTimeout(ctx, w.timeout)
	defer cancel()
	// PutObject replaces the object whole: a retry or a re-run of the
	// effect writes the same bytes to the same key.
	out, err := w.client.PutObject(ctx, &s3.PutObjectInput{
		Bucket:        aws.String(p.bucket),
		Key:           aws.String(p.key),
		Body:          bytes.NewReader(p.body),
		ContentLength: aws.Int64(int64(len(p.body))),
		ContentType:   aws.String(p.contentType),
		Metadata:      p.metadata,
	})
	if err != nil {
		return nil, s3Error(ctx, p, err)
	}
	return BlobResult{
		Bucket:    p.bucket,
		Key:       p.key,
		ETag:      strings.Trim(aws.ToString(out.ETag), `"`),
		Size:      int64(len(p.body)),
		VersionID: nonEmpty(out.VersionId),
	}, nil
}

func nonEmpty(s *string) *string {
	if s == nil || *s == "" || *s == "null" {
		return nil
	}
	return s
}

// Error codes S3 and S3-compatible servers use for "slow down", whatever the
// HTTP status they come with.
var s3ThrottleCodes = []string{"SlowDown", "Throttling", "ThrottlingException", "RequestLimitExceeded", "TooManyRequests", "RequestTimeout"}

// s3Error classifies a PutObject error: throttling, 408, 429, 5xx and
// network errors are retried (after Retry-After when the response has one);
// any other 4xx is permanent.
func s3Error(ctx context.Context, p blobPayload, err error) error {
	where := fmt.Sprintf("blob_put: PUT s3://%s/%s", p.bucket, p.key)
	if ctx.Err() != nil {
		// The attempt's timeout, the handler's deadline or shutdown.
		return fmt.Errorf("%s: %w", where, context.Cause(ctx))
	}
	var resp *smithyhttp.ResponseError
	if !errors.As(err, &resp) || resp.Response == nil || resp.HTTPStatusCode() == 0 {
		// No response: the server could not be reached or the
		// connection broke. Retried.
		return fmt.Errorf("%s: %w", where, err)
	}
	status := resp.HTTPStatusCode()
	code := ""
	var apiErr smithy.APIError
	if errors.As(err, &apiErr) {
		code = apiErr.ErrorCode()
	}
	text := fmt.Sprintf("%s: status %d %s", where, status, http.StatusText(status))
	if apiErr != nil {
		text += fmt.Sprintf(": %s: %s", code, oneLine(apiErr.ErrorMessage()))
	}
	e := errors.New(text)
	if status == http.StatusRequestTimeout || status == http.StatusTooManyRequests || status >= 500 || slices.Contains(s3ThrottleCodes, code) {
		if d, ok := parseRetryAfter(resp.Response.Header.Get("Retry-After"), time.Now()); ok {
			return effects.RetryAfter(d, e)
		}
		return e
	}
	return effects.Permanent(e)
}

// blobPayload is a checked blob_put payload.
type blobPayload struct {
	bucket, key string
	body        []byte
	contentType string
	metadata    map[string]string
}

var blobPayloadFields = []string{"bucket", "key", "body", "body_base64", "content_type", "metadata"}

// parseBlobPayload checks a blob_put payload. Every error names the field
// that is wrong; all of them are permanent.
func parseBlobPayload(raw json.RawMessage) (blobPayload, error) {
	fields, err := payloadObject("blob_put", raw, blobPayloadFields)
	if err != nil {
		return blobPayload{}, err
	}
	var p blobPayload
	bucket, err := stringField("blob_put", fields, "bucket")
	if err != nil {
		return blobPayload{}, err
	}
	if bucket == nil || *bucket == "" {
		return blobPayload{}, errors.New(`blob_put: payload field "bucket" is required`)
	}
	p.bucket = *bucket
	key, err := stringField("blob_put", fields, "key")
	if err != nil {
		return blobPayload{}, err
	}
	if key == nil {
		return blobPayload{}, errors.New(`blob_put: payload field "key" is required`)
	}
	if err := checkKey(*key); err != nil {
		return blobPayload{}, fmt.Errorf(`blob_put: payload field "key" %w`, err)
	}
	p.key = *key

	body, hasBody := fields["body"]
	b64, hasB64 := fields["body_base64"]
	switch {
	case hasBody && hasB64:
		return blobPayload{}, errors.New(`blob_put: payload has both "body" and "body_base64"; give one`)
	case hasBody:
		// Stored as the JSON text the payload holds.
		p.body = body
		p.contentType = "application/json"
	case hasB64:
		var s string
		if err := json.Unmarshal(b64, &s); err != nil {
			return blobPayload{}, errors.New(`blob_put: payload field "body_base64" must be a string`)
		}
		if p.body, err = base64.StdEncoding.DecodeString(s); err != nil {
			return blobPayload{}, fmt.Errorf(`blob_put: payload field "body_base64" is not standard base64: %v`, err)
		}
		p.contentType = "application/octet-stream"
	default:
		return blobPayload{}, errors.New(`blob_put: payload needs "body" (any JSON) or "body_base64"`)
	}

	ct, err := stringField("blob_put", fields, "content_type")
	if err != nil {
		return blobPayload{}, err
	}
	if ct != nil {
		if _, _, err := mime.ParseMediaType(*ct); err != nil || !validHeaderValue(*ct) {
			return blobPayload{}, fmt.Errorf(`blob_put: payload field "content_type" %q is not a media type such as text/csv`, *ct)
		}
		p.contentType = *ct
	}
	if p.metadata, err = metadataField(fields["metadata"]); err != nil {
		return blobPayload{}, err
	}
	return p, nil
}

// checkKey refuses keys that S3-compatible servers storing objects as files
// could resolve outside the bucket or to another object ("..", ".", empty
// segments, a leading "/", a backslash), control characters, and keys over
// S3's limit of 1024 bytes.
func checkKey(k string) error {
	switch {
	case k == "":
		return errors.New("is empty")
	case len(k) > maxKeyBytes:
		return fmt.Errorf("is %d bytes; S3 allows %d", len(k), maxKeyBytes)
	case !utf8.ValidString(k):
		return errors.New("is not valid UTF-8")
	case strings.HasPrefix(k, "/"):
		return fmt.Errorf("%q starts with '/'", k)
	case strings.HasSuffix(k, "/"):
		return fmt.Errorf("%q ends with '/', which names a folder, not an object", k)
	case strings.Contains(k, `\`):
		return fmt.Errorf(`%q has a backslash, which some servers read as a path separator`, k)
	}
	for _, r := range k {
		if unicode.IsControl(r) {
			return fmt.Errorf("%q has a control character", k)
		}
	}
	for _, seg := range strings.Split(k, "/") {
		switch seg {
		case "":
			return fmt.Errorf("%q has an empty segment (\"//\")", k)
		case ".", "..":
			return fmt.Errorf("%q has a %q segment", k, seg)
		}
	}
	return nil
}

func metadataField(raw json.RawMessage) (map[string]string, error) {
	if raw == nil {
		return nil, nil
	}
	var m map[string]string
	if err := json.Unmarshal(raw, &m); err != nil {
		return nil, errors.New(`blob_put: payload field "metadata" must be an object of strings`)
	}
	out := make(map[string]string, len(m))
	size := 0
	for _, name := range slices.Sorted(maps.Keys(m)) {
		value := m[name]
		if !isToken(name) {
			return nil, fmt.Errorf(`blob_put: payload field "metadata": %q is not a valid name (letters, digits, '-', '_')`, name)
		}
		for i := 0; i < len(value); i++ {
			// Sent as x-amz-meta-<name> headers: printable ASCII only.
			if c := value[i]; c < ' ' || c > '~' {
				return nil, fmt.Errorf(`blob_put: payload field "metadata": the value of %q must be printable ASCII`, name)
			}
		}
		lower := strings.ToLower(name)
		if _, dup := out[lower]; dup {
			return nil, fmt.Errorf(`blob_put: payload field "metadata" sets %q twice, in different cases`, lower)
		}
		out[lower] = value
		size += len(lower) + len(value)
	}
	if size > maxMetadataBytes {
		return nil, fmt.Errorf(`blob_put: payload field "metadata" is %d bytes; S3 allows %d`, size, maxMetadataBytes)
	}
	return out, nil
}
