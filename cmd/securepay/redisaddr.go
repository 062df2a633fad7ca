package main

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"strings"

	"github.com/redis/go-redis/v9"
)

// redisOptions turns --redis-addr into go-redis options. It takes host:port (a Redis
// without a password or TLS, as before) or a URL parsed by redis.ParseURL:
//
//	redis://[user:password@]host:port[/db]   AUTH over plain TCP
//	rediss://[user:password@]host:port[/db]  AUTH over TLS, the server's certificate verified
//
// and the URL parameters ParseURL knows (dial_timeout, pool_size...), except skip_verify.
// db is --redis-db; a URL that names its own database must agree with it, since the
// idempotency keys of one database are not seen from another. caFile (--redis-ca-file)
// holds the roots a rediss:// server's certificate is verified against, for a Redis whose
// certificate a private CA signed; without it the system's roots are used.
//
// Errors never quote the password: the address is shown redacted (redactRedisAddr).
func redisOptions(addr string, db int, caFile string) (*redis.Options, error) {
	if !strings.Contains(addr, "://") {
		if _, _, err := net.SplitHostPort(addr); err != nil {
			// Quoted redacted: a URL written without its scheme still holds a password.
			return nil, fmt.Errorf("the Redis address %q is not host:port nor a redis:// or rediss:// URL: %v", redactRedisAddr(addr), redactRedisAddr(err.Error()))
		}
		if caFile != "" {
			return nil, errors.New("--redis-ca-file needs TLS: give --redis-addr as a rediss:// URL")
		}
		return &redis.Options{Addr: addr, DB: db}, nil
	}
	shown := redactRedisAddr(addr)
	scheme, _, _ := strings.Cut(addr, "://")
	if scheme != "redis" && scheme != "rediss" {
		return nil, fmt.Errorf("the Redis URL %s: the scheme must be redis:// or rediss:// (TLS)", shown)
	}
	opts, err := redis.ParseURL(addr)
	if err != nil {
		// ParseURL's error may quote the URL, password included. The same URL without
		// its password says what is wrong, when the fault is elsewhere.
		if _, err2 := redis.ParseURL(shown); err2 != nil {
			return nil, fmt.Errorf("the Redis URL %s does not parse: %v", shown, err2)
		}
		return nil, fmt.Errorf("the Redis URL %s does not parse in its user or password part: percent-encode characters such as @ : / %% in them", shown)
	}
	if opts.TLSConfig != nil && opts.TLSConfig.InsecureSkipVerify {
		// Unverified TLS lets whoever sits on the path pose as Redis and collect the
		// password and every idempotency key: a private CA is what --redis-ca-file is for.
		return nil, fmt.Errorf("the Redis URL %s turns certificate verification off (skip_verify): give the CA that signed Redis's certificate with --redis-ca-file instead", shown)
	}
	if u, err := url.Parse(addr); err == nil && !urlNamesDB(u) {
		opts.DB = db
	} else if db != 0 && opts.DB != db {
		return nil, fmt.Errorf("the Redis URL %s names database %d but --redis-db says %d: name it once", shown, opts.DB, db)
	}
	if caFile != "" {
		if opts.TLSConfig == nil {
			return nil, fmt.Errorf("--redis-ca-file needs TLS: the Redis URL %s is redis://, use rediss://", shown)
		}
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return nil, fmt.Errorf("--redis-ca-file: %w", err)
		}
		roots := x509.NewCertPool()
		if !roots.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("--redis-ca-file %s holds no PEM certificate", caFile)
		}
		opts.TLSConfig.RootCAs = roots
	}
	if opts.TLSConfig != nil && opts.TLSConfig.MinVersion < tls.VersionTLS12 {
		opts.TLSConfig.MinVersion = tls.VersionTLS12
	}
	return opts, nil
}

// urlNamesDB says whether a Redis URL chooses a database, by its path (/2) or its db=
// parameter, which redis.ParseURL both accept.
func urlNamesDB(u *url.URL) bool {
	return strings.Trim(u.Path, "/") != "" || u.Query().Has("db")
}

// redactRedisAddr is the address as it may be shown: a URL's user information (user and
// password) replaced by ***. It works on the text, not on a parsed URL, so that a URL too
// malformed to parse, or written without its scheme, is redacted too; everything up to
// the last @ is hidden, which hides too much only when a query parameter holds an @.
func redactRedisAddr(addr string) string {
	j := strings.LastIndex(addr, "@")
	if j < 0 {
		return addr
	}
	// The scheme is kept when it is one (letters, digits, + - .): text before :// that
	// is not could be the password of a URL mistyped around it.
	if scheme, _, ok := strings.Cut(addr, "://"); ok && len(scheme) < j && scheme != "" &&
		strings.Trim(strings.ToLower(scheme), "abcdefghijklmnopqrstuvwxyz0123456789+-.") == "" {
		return scheme + "://***" + addr[j:]
	}
	return "***" + addr[j:]
}
