package services

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"buf.build/go/protovalidate"
	"connectrpc.com/connect"
)

// maxViolationsTold bounds the sentences of one refusal: a request with hundreds of bad
// metadata keys gets an answer of a readable size, and the Violations detail still lists
// them all for programs.
const maxViolationsTold = 5

// validationMessages turns the schema's refusals into sentences a person can act on, with
// the field path in the ErrorInfo metadata for programs. It sits just inside
// validationReasonInterceptor, which then finds the reason already there, and outside the
// validate interceptor, whose refusals it rewrites; every other error passes untouched.
type validationMessages struct{}

func (validationMessages) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		res, err := next(ctx, req)
		return res, explainValidation(err)
	}
}

func (validationMessages) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return next
}

func (validationMessages) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return func(ctx context.Context, conn connect.StreamingHandlerConn) error {
		return explainValidation(next(ctx, conn))
	}
}

// explainValidation rewrites an InvalidArgument error caused by a protovalidate
// ValidationError (connectrpc.com/validate wraps it as the error's cause) and returns any
// other error as it is.
func explainValidation(err error) error {
	var cerr *connect.Error
	var verr *protovalidate.ValidationError
	if err == nil || !errors.As(err, &cerr) || cerr.Code() != connect.CodeInvalidArgument ||
		!errors.As(err, &verr) || len(verr.Violations) == 0 {
		return err
	}
	return validationError(verr, cerr.Details())
}

// validationError builds the one INVALID_INPUT error for a refused request: a message
// written for people (never a regular expression), an ErrorInfo whose metadata names the
// first refused field ("field": "amount.value") and rule ("rule": "string.pattern"), and
// the original details (buf.validate.Violations) for programs that already read them.
func validationError(verr *protovalidate.ValidationError, details []*connect.ErrorDetail) *connect.Error {
	// One sentence per field: an empty amount breaks both its length and its pattern, and
	// "amount is required" says all a person needs.
	told := make(map[string]bool, min(len(verr.Violations), maxViolationsTold))
	sentences := make([]string, 0, min(len(verr.Violations), maxViolationsTold)+1)
	for _, v := range verr.Violations {
		path := protovalidate.FieldPathString(v.Proto.GetField())
		if told[path] {
			continue
		}
		if len(told) == maxViolationsTold {
			sentences = append(sentences, "and more problems (all are listed in the buf.validate.Violations detail)")
			break
		}
		told[path] = true
		sentences = append(sentences, explainViolation(v))
	}
	first := verr.Violations[0].Proto
	cerr := newErrorWithMetadata(connect.CodeInvalidArgument, ReasonInvalidInput, strings.Join(sentences, "; "), map[string]string{
		"field": protovalidate.FieldPathString(first.GetField()),
		"rule":  first.GetRuleId(),
	})
	for _, d := range details {
		if d.Type() != "google.rpc.ErrorInfo" {
			cerr.AddDetail(d)
		}
	}
	return cerr
}

// fieldSentences say what a field accepts when its pattern refuses a value, keyed by the
// field's own name (the last element of its path), with %s the field's name as the client
// wrote it. They describe the patterns of api/proto; a field missing here gets
// patternFallback, never its regular expression.
var fieldSentences = map[string]string{
	"value":                  "%s must be a positive decimal such as 12.34 (digits and at most one point; no sign, exponent, spaces or leading zeros)",
	"asset":                  "%s must be upper case, e.g. USD, or CODE/SCALE for other assets, e.g. POINTS/0",
	"credit_limit":           "%s must be a decimal of zero or more such as 500.00, or empty for none",
	"account_id":             idSentence,
	"source_account_id":      idSentence,
	"destination_account_id": idSentence,
	"payment_id":             idSentence,
	"capture_id":             idSentence,
	"refund_id":              idSentence,
	"endpoint_id":            "%s must be an endpoint id as RegisterEndpoint returned it: we_ and 32 lower-case hex digits",
}

const (
	idSentence      = "%s may contain only letters, digits and . _ : - (e.g. acct-42)"
	keySentence     = "%s keys may contain only lower-case letters, digits and . _ - (e.g. order.id)"
	patternFallback = "%s is not in a form this field accepts"
)

// ruleSentences say what a rule wants, for any field, keyed by protovalidate's rule id. %s
// is the field, %v the rule's value where the rule has one.
var ruleSentences = map[string]string{
	"required":           "%s is required",
	"string.min_len":     "%s must be at least %v characters long",
	"string.max_len":     "%s must be at most %v characters long",
	"string.max_bytes":   "%s must be at most %v bytes long",
	"uint32.lte":         "%s must be at most %v",
	"uint64.lte":         "%s must be at most %v",
	"uint64.gt":          "%s must be greater than %v",
	"map.max_pairs":      "%s may have at most %v entries",
	"repeated.min_items": "%s must have at least %v entries",
	"repeated.max_items": "%s may have at most %v entries",
	"enum.defined_only":  "%s must be one of the values the API defines",
	"enum.not_in":        "%s must be set",
	"bool.const":         "%s must be %v when it is sent",
	"string.uri":         "%s must be an absolute URL such as https://example.com/hooks/securepay",
	"repeated.unique":    "%s must not name the same entry twice",
}

// explainViolation writes one violation as a sentence about the field the client sent.
func explainViolation(v *protovalidate.Violation) string {
	path := v.Proto.GetField()
	subject := protovalidate.FieldPathString(path)
	name := ""
	if elems := path.GetElements(); len(elems) > 0 {
		name = elems[len(elems)-1].GetFieldName()
	}
	if name == "value" {
		// Money.value is the amount itself: "amount must be ...", not "amount.value must be".
		if parent, ok := strings.CutSuffix(subject, ".value"); ok {
			subject = parent
		}
	}
	if subject == "" {
		subject = "the request"
	}
	rule := v.Proto.GetRuleId()
	switch {
	case name == "kind" && strings.HasPrefix(rule, "enum."):
		return "kind must be ACCOUNT_KIND_CUSTOMER, ACCOUNT_KIND_MERCHANT or ACCOUNT_KIND_EXTERNAL"
	case name == "what" && rule == "required":
		return "either amount or full must be set"
	case rule == "string.min_len" && ruleValue(v) == "1":
		return subject + " is required"
	case strings.HasSuffix(rule, ".pattern"):
		if v.Proto.GetForKey() {
			return fmt.Sprintf(keySentence, strings.TrimSuffix(subject, keyIndex(subject)))
		}
		if s, ok := fieldSentences[name]; ok {
			return fmt.Sprintf(s, subject)
		}
		return fmt.Sprintf(patternFallback, subject)
	}
	if s, ok := ruleSentences[rule]; ok {
		if strings.Contains(s, "%v") {
			return fmt.Sprintf(s, subject, ruleValue(v))
		}
		return fmt.Sprintf(s, subject)
	}
	// A rule added to the schema without a sentence here: protovalidate's own words are
	// plain for everything but patterns (handled above), and a test keeps them free of
	// regular expressions.
	if msg := v.Proto.GetMessage(); msg != "" && !strings.Contains(msg, "regex") {
		return subject + ": " + msg
	}
	return fmt.Sprintf(patternFallback, subject)
}

// ruleValue is the rule's setting as text ("40" for max_len: 40), or "" when it has none.
func ruleValue(v *protovalidate.Violation) string {
	if !v.RuleValue.IsValid() {
		return ""
	}
	return fmt.Sprint(v.RuleValue.Interface())
}

// keyIndex is the map index at the end of a path (`["Key"]` of `metadata["Key"]`), so that
// a refused key is spoken of as the map's keys.
func keyIndex(path string) string {
	if i := strings.LastIndex(path, "["); i > 0 && strings.HasSuffix(path, "]") {
		return path[i:]
	}
	return ""
}
