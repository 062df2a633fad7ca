package domain_test

import (
	"bytes"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"

	"github.com/securepay/securepay/domain"
)

var updateDocs = flag.Bool("update", false, "rewrite the example payloads in docs/EVENTS.md from the encoder")

const eventsDoc = "../docs/EVENTS.md"

// v1AccountOpened is a payload as the first schema stored it; the upcast test and the docs
// both show it.
const v1AccountOpened = `{"account_id":"acc-1","currency":"JPY","kind":"merchant","credit_limit_minor":"0"}`

// docExamples gives the example payload of every known event name, from the encoder itself.
func docExamples(t *testing.T) map[string][]byte {
	t.Helper()
	out := map[string][]byte{domain.NameAccountOpenedV1: []byte(v1AccountOpened)}
	for _, e := range exampleEvents() {
		name, data, err := domain.EncodeEvent(e)
		if err != nil {
			t.Fatalf("EncodeEvent(%T): %v", e, err)
		}
		out[name] = data
	}
	return out
}

var exampleBlock = regexp.MustCompile("(?s)<!-- example (\\S+) -->\n```json\n(.*?)```")

// TestEventsDocMatchesCode keeps docs/EVENTS.md honest for auditors: every decodable name has
// a section, every example is exactly what the encoder writes (compared as compact JSON),
// every field of an example is documented in its section, and every example decodes.
// Run with -update to rewrite the examples after a schema change.
func TestEventsDocMatchesCode(t *testing.T) {
	raw, err := os.ReadFile(eventsDoc)
	if err != nil {
		t.Fatalf("read %s: %v", filepath.Clean(eventsDoc), err)
	}
	examples := docExamples(t)
	doc := string(raw)
	if *updateDocs {
		doc = exampleBlock.ReplaceAllStringFunc(doc, func(block string) string {
			name := exampleBlock.FindStringSubmatch(block)[1]
			data, ok := examples[name]
			if !ok {
				return block
			}
			var pretty bytes.Buffer
			if err := json.Indent(&pretty, data, "", "  "); err != nil {
				t.Fatalf("indent example of %s: %v", name, err)
			}
			return "<!-- example " + name + " -->\n```json\n" + pretty.String() + "\n```"
		})
		if err := os.WriteFile(eventsDoc, []byte(doc), 0o644); err != nil {
			t.Fatalf("write %s: %v", eventsDoc, err)
		}
	}
	found := map[string]string{}
	for _, m := range exampleBlock.FindAllStringSubmatch(doc, -1) {
		found[m[1]] = m[2]
	}
	names := domain.KnownEventNames()
	sort.Strings(names)
	for _, name := range names {
		heading := "### `" + name + "`"
		start := strings.Index(doc, heading)
		if start < 0 {
			t.Errorf("%s has no section %q", eventsDoc, heading)
			continue
		}
		section := doc[start+len(heading):]
		if end := strings.Index(section, "\n### "); end >= 0 {
			section = section[:end]
		}
		block, ok := found[name]
		if !ok {
			t.Errorf("%s: section of %s has no example block (<!-- example %s --> and a json fence); run go test ./domain/ -run TestEventsDocMatchesCode -update", eventsDoc, name, name)
			continue
		}
		var compact bytes.Buffer
		if err := json.Compact(&compact, []byte(block)); err != nil {
			t.Errorf("%s: example of %s is not JSON: %v", eventsDoc, name, err)
			continue
		}
		if want := examples[name]; !bytes.Equal(compact.Bytes(), want) {
			t.Errorf("%s: example of %s differs from the encoder's output:\n doc  %s\n code %s\n(run with -update)", eventsDoc, name, compact.Bytes(), want)
		}
		if _, err := domain.DecodeEvent(name, compact.Bytes()); err != nil {
			t.Errorf("%s: example of %s does not decode: %v", eventsDoc, name, err)
		}
		var fields map[string]any
		if err := json.Unmarshal(compact.Bytes(), &fields); err != nil {
			t.Fatalf("example of %s: %v", name, err)
		}
		for field := range fields {
			if !strings.Contains(section, "`"+field+"`") {
				t.Errorf("%s: field %q of %s is not documented in its section", eventsDoc, field, name)
			}
		}
	}
}
