package main

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"connectrpc.com/connect"
	"github.com/lestrrat-go/jwx/v3/jwa"
	"github.com/lestrrat-go/jwx/v3/jwk"
	"github.com/lestrrat-go/jwx/v3/jwt"

	"github.com/securepay/securepay/services/edge"
	"github.com/securepay/securepay/services/gateway"
)

// Development tokens: `securepay dev` trusts tokens signed with a key of its own, kept in
// a private file of the user's (devKeyPath), and `securepay dev token` signs them with the
// same key. Nothing else trusts that key: a production gateway trusts its OIDC issuer
// only (infra/keycloak). The tokens say what they are in a claim of their own and in
// their issuer, so one found in a log is recognised at a glance.
const (
	devIssuer     = "urn:securepay:dev-issuer"
	devAudience   = "securepay-dev"
	devLabelClaim = "securepay_dev"
	devLabel      = "DEVELOPMENT TOKEN signed by the local key of securepay dev; trusted by nothing else"
	// devTokenTTL is long enough for a day's work, short enough that a pasted token
	// does not live for ever.
	devTokenTTL = 12 * time.Hour
)

// devKeyPath is the development signing key: --key-file, else $SECUREPAY_CACHE/dev (the
// user cache directory's securepay/dev otherwise). It outlives any one `securepay dev`, so
// tokens keep working across restarts of a dev ledger.
func devKeyPath(e env, flagValue string) (string, error) {
	if flagValue != "" {
		return flagValue, nil
	}
	dir := e.getenv("SECUREPAY_CACHE")
	if dir == "" {
		if dir = userCacheDir(e.getenv); dir == "" {
			return "", errors.New("no place for the development signing key: set SECUREPAY_CACHE or HOME, or give --key-file")
		}
		dir = filepath.Join(dir, "securepay")
	}
	return filepath.Join(dir, "dev", "token-signing-key.pem"), nil
}

// devSigner is the development issuer: an ES256 key and its kid (the key's thumbprint).
type devSigner struct {
	key  *ecdsa.PrivateKey
	kid  string
	path string
}

// loadOrCreateDevKey reads the key at path, or creates it there (a private file in a
// private directory). A key file others can read is refused, like every secret file.
func loadOrCreateDevKey(path string) (*devSigner, error) {
	raw, err := readSecretFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return createDevKey(path)
	}
	if err != nil {
		return nil, fmt.Errorf("development signing key: %w", err)
	}
	block, _ := pem.Decode([]byte(raw))
	if block == nil || block.Type != "PRIVATE KEY" {
		return nil, fmt.Errorf("development signing key %s is not a PEM private key; delete it and a new one is made", path)
	}
	k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("development signing key %s: %w", path, err)
	}
	ec, ok := k.(*ecdsa.PrivateKey)
	if !ok || ec.Curve != elliptic.P256() {
		return nil, fmt.Errorf("development signing key %s is not a P-256 key; delete it and a new one is made", path)
	}
	return newDevSigner(ec, path)
}

func createDevKey(path string) (*devSigner, error) {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("development signing key: %w", err)
	}
	// O_EXCL: two commands starting at once make one key, and the loser reads it.
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if errors.Is(err, fs.ErrExist) {
		return loadOrCreateDevKey(path)
	}
	if err != nil {
		return nil, fmt.Errorf("development signing key: %w", err)
	}
	if err := pem.Encode(f, &pem.Block{Type: "PRIVATE KEY", Bytes: der}); err != nil {
		_ = f.Close()
		return nil, fmt.Errorf("development signing key: %w", err)
	}
	if err := f.Close(); err != nil {
		return nil, fmt.Errorf("development signing key: %w", err)
	}
	return newDevSigner(k, path)
}

func newDevSigner(k *ecdsa.PrivateKey, path string) (*devSigner, error) {
	pub, err := jwk.Import(k.Public())
	if err != nil {
		return nil, err
	}
	tp, err := pub.Thumbprint(crypto.SHA256)
	if err != nil {
		return nil, err
	}
	return &devSigner{key: k, kid: "dev-" + base64.RawURLEncoding.EncodeToString(tp[:12]), path: path}, nil
}

// jwks is the public key set a dev gateway trusts, and what dev serves at
// /.well-known/jwks.json.
func (s *devSigner) jwks() ([]byte, error) {
	pub, err := jwk.Import(s.key.Public())
	if err != nil {
		return nil, err
	}
	for k, v := range map[string]any{jwk.KeyIDKey: s.kid, jwk.AlgorithmKey: jwa.ES256(), jwk.KeyUsageKey: "sig"} {
		if err := pub.Set(k, v); err != nil {
			return nil, err
		}
	}
	set := jwk.NewSet()
	if err := set.AddKey(pub); err != nil {
		return nil, err
	}
	return json.Marshal(set)
}

// gatewayAuth is what a dev gateway accepts: tokens of this key only, ES256 only.
func (s *devSigner) gatewayAuth() (gateway.Auth, error) {
	set, err := s.jwks()
	if err != nil {
		return gateway.Auth{}, err
	}
	return gateway.Auth{Issuer: devIssuer, Audience: devAudience, StaticJWKS: set, Algorithms: []string{"ES256"}}, nil
}

// sign makes a development token.
func (s *devSigner) sign(subject string, roles, accounts []string, ttl time.Duration, now time.Time) (string, error) {
	priv, err := jwk.Import(s.key)
	if err != nil {
		return "", err
	}
	if err := priv.Set(jwk.KeyIDKey, s.kid); err != nil {
		return "", err
	}
	tok, err := jwt.NewBuilder().
		Issuer(devIssuer).Audience([]string{devAudience}).Subject(subject).
		IssuedAt(now).NotBefore(now).Expiration(now.Add(ttl)).
		Claim("roles", roles).Claim("accounts", accounts).Claim(devLabelClaim, devLabel).
		Build()
	if err != nil {
		return "", err
	}
	b, err := jwt.Sign(tok, jwt.WithKey(jwa.ES256(), priv))
	if err != nil {
		return "", err
	}
	return string(b), nil
}

type devTokenCmd struct {
	roles, accounts multi
	subject         string
	ttl             time.Duration
	keyFile         string
}

// devTokenCommand is `securepay dev token`.
func devTokenCommand(e env) *Command {
	c := &devTokenCmd{}
	cmd := &Command{
		UsageLine: "securepay dev token --role ROLE [--account ACCOUNT_ID]... [flags]",
		Short:     "print a development access token for the gateway of `securepay dev`",
		Long: "Print a development access token for the gateway of `securepay dev`, signed with the\n" +
			"development key in your cache directory (made on first use; `dev` trusts it and nothing\n" +
			"else does). Roles: customer (moves money out of its --account ids and reads them),\n" +
			"operator (opens external accounts, credit limits, freezes and closes), auditor (reads\n" +
			"the whole log). Give the token to the CLI with SECUREPAY_TOKEN or --token-file:\n\n" +
			"    export SECUREPAY_TOKEN=$(securepay dev token --role customer --account alice)\n" +
			"    securepay balance alice",
		Run: func(ctx context.Context, e env, _ []string) error { return c.run(e) },
	}
	fs := &cmd.Flag
	fs.Var(&c.roles, "role", "a `role` of the token: customer, operator or auditor (repeat or separate with commas)")
	fs.Var(&c.accounts, "account", "an `account` id the token owns (repeat or separate with commas)")
	fs.StringVar(&c.subject, "subject", "", "the token's subject, recorded as the actor of its writes (default dev-ROLE-ACCOUNT)")
	fs.DurationVar(&c.ttl, "ttl", devTokenTTL, "how long the token is valid (at most 7 days)")
	fs.StringVar(&c.keyFile, "key-file", "", "the development signing key `file` (default: in $SECUREPAY_CACHE/dev or the user cache directory)")
	return cmd
}

func (c *devTokenCmd) run(e env) error {
	var roles, accounts []string
	for _, r := range c.roles {
		roles = append(roles, splitList(r)...)
	}
	for _, a := range c.accounts {
		accounts = append(accounts, splitList(a)...)
	}
	if len(roles) == 0 {
		return usagef("dev token: say --role customer, operator or auditor")
	}
	for _, r := range roles {
		if !validRole(r) {
			return usagef("dev token: unknown role %q: say customer, operator or auditor", r)
		}
	}
	if c.ttl <= 0 || c.ttl > 7*24*time.Hour {
		return usagef("dev token: --ttl must be between 1s and 168h")
	}
	for _, a := range accounts {
		if !edge.Valid(a) || strings.ContainsAny(a, "/\\") {
			return usagef("dev token: %q is not an account id", a)
		}
	}
	if slices.Contains(roles, string(gateway.RoleCustomer)) && len(accounts) == 0 {
		return usagef("dev token: a customer token needs at least one --account it owns")
	}
	sub := c.subject
	if sub == "" {
		sub = "dev-" + strings.Join(roles, "+")
		if len(accounts) > 0 {
			sub += "-" + accounts[0]
		}
	}
	if !edge.Valid(sub) {
		return usagef("dev token: --subject must be 1..%d visible ASCII characters", edge.MaxValueBytes)
	}
	path, err := devKeyPath(e, c.keyFile)
	if err != nil {
		return err
	}
	s, err := loadOrCreateDevKey(path)
	if err != nil {
		return err
	}
	tok, err := s.sign(sub, roles, accounts, c.ttl, time.Now())
	if err != nil {
		return fmt.Errorf("dev token: %w", err)
	}
	fmt.Fprintln(e.stdout, tok)
	fmt.Fprintf(e.stderr, "# development token: subject %s, roles %s, accounts %s, valid %s; trusted only by securepay dev\n",
		sub, strings.Join(roles, ","), strings.Join(accounts, ","), c.ttl)
	return nil
}

func validRole(r string) bool {
	for _, k := range gateway.Roles() {
		if string(k) == r {
			return true
		}
	}
	return false
}

// clientToken is the bearer token client commands send: SECUREPAY_TOKEN, or the file
// --token-file (SECUREPAY_TOKEN_FILE) names, which must be private like every secret
// file. "" when neither is set (a server without a gateway, or one that will say
// UNAUTHENTICATED).
func clientToken(e env, tokenFile string) (string, error) {
	tok := strings.TrimSpace(e.getenv("SECUREPAY_TOKEN"))
	if tokenFile != "" {
		if tok != "" {
			return "", usagef("the token is given twice: SECUREPAY_TOKEN and --token-file (SECUREPAY_TOKEN_FILE); keep one")
		}
		v, err := readSecretFile(tokenFile)
		if err != nil {
			return "", fmt.Errorf("--token-file: %w", err)
		}
		tok = v
	}
	if strings.ContainsAny(tok, " \t\r\n") {
		return "", errors.New("the access token contains white space: give the token alone")
	}
	return tok, nil
}

// bearerAuth sends the token as "Authorization: Bearer" on every call and stream.
type bearerAuth string

func (b bearerAuth) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		req.Header().Set("Authorization", "Bearer "+string(b))
		return next(ctx, req)
	}
}

func (b bearerAuth) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return func(ctx context.Context, spec connect.Spec) connect.StreamingClientConn {
		conn := next(ctx, spec)
		conn.RequestHeader().Set("Authorization", "Bearer "+string(b))
		return conn
	}
}

func (b bearerAuth) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return next
}

// devTokenSigner is dev's signer: the key of --token-key-file, else the default
// (devKeyPath), else, where the environment names no cache directory, a key in dev's own
// directory. note says where, for the banner.
func devTokenSigner(e env, keyFile, dir string) (*devSigner, string, error) {
	path, err := devKeyPath(e, keyFile)
	if err != nil {
		path = filepath.Join(dir, "token-signing-key.pem")
	}
	s, err := loadOrCreateDevKey(path)
	if err != nil {
		return nil, "", err
	}
	return s, path, nil
}

// devTokenKeyFlag is the --key-file a `dev token` command needs to use s: none when s
// is the default key.
func devTokenKeyFlag(e env, s *devSigner) string {
	if def, err := devKeyPath(e, ""); err == nil && def == s.path {
		return ""
	}
	return " --key-file " + s.path
}
