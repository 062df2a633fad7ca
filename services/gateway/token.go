package gateway

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/lestrrat-go/jwx/v3/jwa"
	"github.com/lestrrat-go/jwx/v3/jwk"
	"github.com/lestrrat-go/jwx/v3/jwt"

	"github.com/securepay/securepay/services/edge"
)

// Principal is an authenticated caller: who (the token's subject), what it may do (its
// roles) and which accounts it owns (for customers).
type Principal struct {
	Subject  string
	Roles    []Role
	Accounts map[string]bool
}

// Has reports whether p holds role r.
func (p Principal) Has(r Role) bool { return slices.Contains(p.Roles, r) }

// Owns reports whether account is one of p's.
func (p Principal) Owns(account string) bool { return p.Accounts[account] }

// errToken is every refusal of a token. The client learns only that its token was not
// accepted and, where it helps an honest client, why in general terms (expired, wrong
// audience); the detail goes to the log.
var errToken = errors.New("token refused")

// tokenError says why a token was refused. public is what the client may read.
type tokenError struct {
	public string
	detail error
}

func (e *tokenError) Error() string {
	if e.detail == nil {
		return e.public
	}
	return e.public + ": " + e.detail.Error()
}
func (e *tokenError) Unwrap() error { return errToken }

func refuse(public string, detail error) error { return &tokenError{public: public, detail: detail} }

// verifier checks access tokens. It is safe for concurrent use.
type verifier struct {
	keys          keySource
	issuer        string
	audience      string
	algorithms    map[string]jwa.SignatureAlgorithm
	leeway        time.Duration
	maxBytes      int
	rolesClaim    string
	accountsClaim string
	now           func() time.Time
	cache         verifiedCache
}

// headers a token may carry in its protected header. Anything else is refused: jku, x5u,
// jwk and x5c would let the token name its own key (key injection), crit would demand
// processing we do not do, and b64=false changes what is signed.
var allowedHeaders = map[string]bool{"alg": true, "kid": true, "typ": true}

// maxRoles and maxAccounts bound what one token may list.
const (
	maxRoles    = 16
	maxAccounts = 256
)

// verifiedCache remembers tokens that verified, so that a client sending the same token
// with every call pays for the signature and the parse once: verification was a fifth of
// the gateway's CPU per transfer (BenchmarkTransfer's profile). An entry is used until
// the token's exp (plus the leeway) or for verifiedTTL, whichever comes first, so a key
// the issuer withdraws stops being honoured within verifiedTTL. Refusals are not cached:
// a forged token costs its verification every time, which the rate of refusals bounds
// (they are cheap to check before the signature) and the key cache bounds further.
//
// Entries are keyed by the token itself, compared whole: a hit costs a map hash and one
// comparison of the token's bytes, where a SHA-256 of it cost 3.5 µs per call
// (BenchmarkVerifyCached), and no other token can ever match an entry. The tokens held are
// bounded in number and in bytes.
type verifiedCache struct {
	mu      sync.Mutex
	entries map[string]verifiedEntry
	bytes   int // sum of the cached tokens' lengths
}

type verifiedEntry struct {
	p     Principal
	until time.Time
}

const (
	verifiedTTL        = time.Minute
	maxVerifiedEntries = 16384
	// maxVerifiedBytes bounds the tokens held: 4,096 tokens of the 8 KiB maximum, or
	// 16,384 of 2 KiB (a token with a few dozen accounts).
	maxVerifiedBytes = 32 << 20
)

func (c *verifiedCache) get(token string, now time.Time) (Principal, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.entries[token]
	if !ok {
		return Principal{}, false
	}
	if !now.Before(e.until) {
		delete(c.entries, token)
		c.bytes -= len(token)
		return Principal{}, false
	}
	return e.p, true
}

func (c *verifiedCache) put(token string, p Principal, until time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.entries == nil || len(c.entries) >= maxVerifiedEntries || c.bytes+len(token) > maxVerifiedBytes {
		// Full: start over rather than track recency; the cost is one verification per
		// active token, once.
		c.entries = make(map[string]verifiedEntry, 1024)
		c.bytes = 0
	}
	if _, ok := c.entries[token]; !ok {
		c.bytes += len(token)
	}
	// A copy: the token given is a substring of the request's Authorization header
	// ("Bearer " and the token), which the cache need not keep.
	c.entries[strings.Clone(token)] = verifiedEntry{p: p, until: until}
}

// verify returns the principal of a valid token, or an error wrapping errToken.
func (v *verifier) verify(ctx context.Context, token string) (Principal, error) {
	if len(token) > v.maxBytes {
		return Principal{}, refuse(fmt.Sprintf("the token is longer than %d bytes", v.maxBytes), nil)
	}
	now := v.now()
	if p, ok := v.cache.get(token, now); ok {
		return p, nil
	}
	c, err := v.check(ctx, token)
	if err != nil {
		return Principal{}, err
	}
	until := now.Add(verifiedTTL)
	if limit := c.exp.Add(v.leeway); limit.Before(until) {
		until = limit
	}
	v.cache.put(token, c.principal, until)
	return c.principal, nil
}

type checked struct {
	principal Principal
	exp       time.Time
}

// check is the verification proper.
func (v *verifier) check(ctx context.Context, token string) (checked, error) {
	if len(token) > v.maxBytes {
		return checked{}, refuse(fmt.Sprintf("the token is longer than %d bytes", v.maxBytes), nil)
	}
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		return checked{}, refuse("the token is not a signed JWT in compact form (header.payload.signature)", nil)
	}
	hdrJSON, err := base64.RawURLEncoding.DecodeString(parts[0])
	if err != nil {
		return checked{}, refuse("the token's header is not base64url", err)
	}
	var hdr map[string]json.RawMessage
	if err := json.Unmarshal(hdrJSON, &hdr); err != nil {
		return checked{}, refuse("the token's header is not a JSON object", err)
	}
	for name := range hdr {
		if !allowedHeaders[name] {
			return checked{}, refuse(fmt.Sprintf("the token's header carries %q, which this API refuses", name), nil)
		}
	}
	var algName, kid string
	if err := json.Unmarshal(hdr["alg"], &algName); err != nil {
		return checked{}, refuse("the token's header has no alg", err)
	}
	alg, ok := v.algorithms[algName]
	if !ok {
		return checked{}, refuse(fmt.Sprintf("the token is signed with %q, which this API does not accept", algName), nil)
	}
	if err := json.Unmarshal(hdr["kid"], &kid); err != nil || kid == "" {
		return checked{}, refuse("the token's header names no key (kid)", err)
	}
	key, ok := v.keys.key(ctx, kid)
	if !ok {
		return checked{}, refuse("the token is signed with a key the issuer does not publish", fmt.Errorf("kid %q", kid))
	}
	// A key published for one algorithm is used for that one only: an RSA key marked
	// PS256 cannot verify an RS256 token.
	if ka, ok := key.Algorithm(); ok && ka.String() != alg.String() {
		return checked{}, refuse("the token's algorithm does not match its key", fmt.Errorf("kid %q is for %s, token says %s", kid, ka, alg))
	}
	tok, err := jwt.Parse([]byte(token),
		jwt.WithKey(alg, key),
		jwt.WithValidate(true),
		jwt.WithIssuer(v.issuer),
		jwt.WithAudience(v.audience),
		jwt.WithAcceptableSkew(v.leeway),
		jwt.WithClock(jwt.ClockFunc(v.now)),
		jwt.WithRequiredClaim(jwt.ExpirationKey),
		jwt.WithRequiredClaim(jwt.SubjectKey),
	)
	if err != nil {
		return checked{}, refuse(publicJWTError(err), err)
	}
	sub, _ := tok.Subject()
	if !edge.Valid(sub) {
		return checked{}, refuse(fmt.Sprintf("the token's subject must be 1..%d visible ASCII characters", edge.MaxValueBytes), nil)
	}
	// The claims were verified with the signature; read ours from the same payload.
	payload, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return checked{}, refuse("the token's payload is not base64url", err)
	}
	var claims map[string]json.RawMessage
	if err := json.Unmarshal(payload, &claims); err != nil {
		return checked{}, refuse("the token's payload is not a JSON object", err)
	}
	roles, err := stringList(claims[v.rolesClaim], maxRoles)
	if err != nil {
		return checked{}, refuse(fmt.Sprintf("the token's %q claim must be a list of at most %d roles", v.rolesClaim, maxRoles), err)
	}
	accounts, err := stringList(claims[v.accountsClaim], maxAccounts)
	if err != nil {
		return checked{}, refuse(fmt.Sprintf("the token's %q claim must be a list of at most %d account ids", v.accountsClaim, maxAccounts), err)
	}
	p := Principal{Subject: sub, Accounts: make(map[string]bool, len(accounts))}
	for _, r := range roles {
		// Unknown roles are ignored, not refused: an identity provider gives users roles
		// of other applications too. They grant nothing here.
		if role := Role(r); knownRole(role) && !p.Has(role) {
			p.Roles = append(p.Roles, role)
		}
	}
	for _, a := range accounts {
		p.Accounts[a] = true
	}
	exp, _ := tok.Expiration()
	return checked{principal: p, exp: exp}, nil
}

// stringList decodes a claim that is absent, one string, or a list of strings.
func stringList(raw json.RawMessage, max int) ([]string, error) {
	if len(raw) == 0 || string(raw) == "null" {
		return nil, nil
	}
	var one string
	if err := json.Unmarshal(raw, &one); err == nil {
		return []string{one}, nil
	}
	var list []string
	if err := json.Unmarshal(raw, &list); err != nil {
		return nil, err
	}
	if len(list) > max {
		return nil, fmt.Errorf("%d entries", len(list))
	}
	return list, nil
}

// publicJWTError says in general terms why jwx refused a token.
func publicJWTError(err error) string {
	switch {
	case errors.Is(err, jwt.TokenExpiredError()):
		return "the token has expired; get a new one"
	case errors.Is(err, jwt.TokenNotYetValidError()):
		return "the token is not valid yet (nbf); check the issuer's clock"
	case errors.Is(err, jwt.InvalidIssuerError()):
		return "the token was issued by an issuer this API does not trust"
	case errors.Is(err, jwt.InvalidAudienceError()):
		return "the token is not for this API (aud)"
	case errors.Is(err, jwt.MissingRequiredClaimError()):
		return "the token lacks a required claim (exp, sub)"
	}
	return "the token's signature or claims are not valid"
}

// parseAlgorithms turns names ("RS256", "ES256") into the allowed set, refusing none,
// the HMAC family (a shared secret has no place in an access token verified by a
// gateway; it is also the classic confusion with a public key) and unknown names.
func parseAlgorithms(names []string) (map[string]jwa.SignatureAlgorithm, error) {
	out := map[string]jwa.SignatureAlgorithm{}
	for _, n := range names {
		if n == "none" || strings.HasPrefix(n, "HS") {
			return nil, fmt.Errorf("gateway config: algorithm %q is not allowed for access tokens", n)
		}
		a, ok := jwa.LookupSignatureAlgorithm(n)
		if !ok {
			return nil, fmt.Errorf("gateway config: unknown signature algorithm %q", n)
		}
		out[n] = a
	}
	if len(out) == 0 {
		return nil, errors.New("gateway config: at least one signature algorithm is required")
	}
	return out, nil
}

// bearer extracts the token of an "Authorization: Bearer" header value.
func bearer(v string) (string, bool) {
	scheme, tok, ok := strings.Cut(v, " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return "", false
	}
	tok = strings.TrimSpace(tok)
	return tok, tok != ""
}

// keySetFromJSON parses a JWKS document (for Config.StaticJWKS).
func keySetFromJSON(b []byte) (jwk.Set, error) {
	set, err := jwk.Parse(b)
	if err != nil {
		return nil, fmt.Errorf("gateway config: static JWKS: %w", err)
	}
	if set.Len() == 0 {
		return nil, errors.New("gateway config: static JWKS holds no keys")
	}
	return set, nil
}
