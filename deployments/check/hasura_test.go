package check

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/effects-run/effects/internal/envconfig"
	"github.com/effects-run/effects/internal/ingest"
	"github.com/effects-run/effects/internal/natsconn"
	"github.com/effects-run/effects/internal/schema"
)

type eventTrigger struct {
	Name       string `yaml:"name"`
	Definition struct {
		EnableManual bool `yaml:"enable_manual"`
		Insert       *struct {
			Columns any `yaml:"columns"`
		} `yaml:"insert"`
		Update any `yaml:"update"`
		Delete any `yaml:"delete"`
	} `yaml:"definition"`
	RetryConf struct {
		NumRetries  int `yaml:"num_retries"`
		IntervalSec int `yaml:"interval_sec"`
		TimeoutSec  int `yaml:"timeout_sec"`
	} `yaml:"retry_conf"`
	Webhook        string `yaml:"webhook"`
	WebhookFromEnv string `yaml:"webhook_from_env"`
	Headers        []struct {
		Name         string `yaml:"name"`
		Value        string `yaml:"value"`
		ValueFromEnv string `yaml:"value_from_env"`
	} `yaml:"headers"`

	secretEnv string // value_from_env of the secret header
}

type hasuraMetadata struct {
	trigger eventTrigger
	// fromEnv is every variable the metadata reads from Hasura's
	// environment (from_env, value_from_env, webhook_from_env).
	fromEnv []string
}

// readHasuraYAML reads a metadata file and replaces every "!include path"
// string by the included file's content, as Hasura's CLI does.
func readHasuraYAML(t *testing.T, path string) any {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var v any
	if err := yaml.Unmarshal(data, &v); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	var resolve func(any) any
	resolve = func(v any) any {
		switch v := v.(type) {
		case string:
			if rest, ok := strings.CutPrefix(v, "!include "); ok {
				return readHasuraYAML(t, filepath.Join(filepath.Dir(path), strings.TrimSpace(rest)))
			}
		case []any:
			var out []any
			for _, item := range v {
				r := resolve(item)
				// An included list of tables is spliced into the list.
				if l, ok := r.([]any); ok {
					if s, isStr := item.(string); isStr && strings.HasPrefix(s, "!include ") {
						out = append(out, l...)
						continue
					}
				}
				out = append(out, r)
			}
			return out
		case map[string]any:
			for k, item := range v {
				v[k] = resolve(item)
			}
		}
		return v
	}
	return resolve(v)
}

func loadHasuraMetadata(t *testing.T) hasuraMetadata {
	t.Helper()
	dir := repoPath("deployments", "hasura", "metadata")
	var version struct {
		Version int `yaml:"version"`
	}
	if err := yaml.Unmarshal(readRepoFile(t, "deployments", "hasura", "metadata", "version.yaml"), &version); err != nil || version.Version != 3 {
		t.Fatalf("hasura metadata version.yaml: want version 3 (cli-migrations-v3), got %d (%v)", version.Version, err)
	}
	dbs := readHasuraYAML(t, filepath.Join(dir, "databases", "databases.yaml"))
	var md hasuraMetadata
	var walk func(any)
	walk = func(v any) {
		switch v := v.(type) {
		case map[string]any:
			for k, item := range v {
				if s, ok := item.(string); ok && (k == "from_env" || k == "value_from_env" || k == "webhook_from_env") {
					md.fromEnv = append(md.fromEnv, s)
				}
				walk(item)
			}
		case []any:
			for _, item := range v {
				walk(item)
			}
		}
	}
	walk(dbs)

	// Back to YAML and into types, to read the trigger.
	data, err := yaml.Marshal(dbs)
	if err != nil {
		t.Fatal(err)
	}
	var typed []struct {
		Name   string `yaml:"name"`
		Kind   string `yaml:"kind"`
		Tables []struct {
			Table struct {
				Name   string `yaml:"name"`
				Schema string `yaml:"schema"`
			} `yaml:"table"`
			EventTriggers []eventTrigger `yaml:"event_triggers"`
		} `yaml:"tables"`
	}
	if err := yaml.Unmarshal(data, &typed); err != nil {
		t.Fatalf("hasura metadata: %v", err)
	}
	var triggers []eventTrigger
	for _, db := range typed {
		if db.Kind != "postgres" {
			t.Errorf("hasura database %s: kind %q, want postgres", db.Name, db.Kind)
		}
		for _, tbl := range db.Tables {
			if tbl.Table.Name != schema.DefaultTable || tbl.Table.Schema != "public" {
				continue
			}
			triggers = append(triggers, tbl.EventTriggers...)
		}
	}
	if len(triggers) != 1 {
		t.Fatalf("hasura metadata: want one event trigger on public.%s, found %d", schema.DefaultTable, len(triggers))
	}
	md.trigger = triggers[0]
	for _, h := range md.trigger.Headers {
		if strings.EqualFold(h.Name, ingest.SecretHeader) {
			md.trigger.secretEnv = h.ValueFromEnv
		}
	}
	return md
}

func TestHasuraMetadata(t *testing.T) {
	md := loadHasuraMetadata(t)
	tr := md.trigger
	if tr.Definition.Insert == nil || tr.Definition.Insert.Columns != "*" {
		t.Error("the trigger must fire on INSERT with columns \"*\"")
	}
	if tr.Definition.Update != nil || tr.Definition.Delete != nil {
		t.Error("the trigger must fire on INSERT only: the ingest ignores updates and deletes, and every one would be a request")
	}
	if !tr.Definition.EnableManual {
		t.Error("enable_manual must be true: Invoke in the console is how an effect is re-run")
	}
	if tr.Webhook != "" || tr.WebhookFromEnv == "" {
		t.Error("the webhook must come from Hasura's environment (webhook_from_env), so each deployment points it at its ingest")
	}
	if tr.secretEnv == "" {
		t.Errorf("no %s header with value_from_env: the ingest refuses requests without its secret", ingest.SecretHeader)
	}
	for _, h := range tr.Headers {
		if h.Value != "" {
			t.Errorf("header %s has a literal value: secrets belong in Hasura's environment (value_from_env)", h.Name)
		}
	}
	rc := tr.RetryConf
	if rc.NumRetries < 1 || rc.IntervalSec < 1 {
		t.Errorf("retry_conf: num_retries %d, interval_sec %d: Hasura's default of no retries loses an event on the first 503", rc.NumRetries, rc.IntervalSec)
	}
	if time.Duration(rc.TimeoutSec)*time.Second <= ingest.DefaultPublishTimeout {
		t.Errorf("retry_conf.timeout_sec %d is not above the ingest's publish timeout %s", rc.TimeoutSec, ingest.DefaultPublishTimeout)
	}
	// The duplicate window must cover Hasura's retries of one event, so a
	// retry after a lost reply is stored once.
	window := natsconn.SettingsFromEnv(envconfig.FromMap(nil)).Streams.Duplicates
	if retries := time.Duration(rc.NumRetries*rc.IntervalSec) * time.Second; retries >= window {
		t.Errorf("retry_conf: %d retries %ds apart (%s) outlast the default EFFECTS_DUPLICATE_WINDOW %s", rc.NumRetries, rc.IntervalSec, retries, window)
	}
	for _, want := range []string{"HASURA_GRAPHQL_DATABASE_URL", tr.WebhookFromEnv, tr.secretEnv} {
		if want == "" {
			continue // reported above
		}
		found := false
		for _, n := range md.fromEnv {
			found = found || n == want
		}
		if !found {
			t.Errorf("%s not among the variables the metadata reads: %v", want, md.fromEnv)
		}
	}
}
