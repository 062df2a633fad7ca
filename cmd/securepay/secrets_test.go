package main

import (
	"context"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// The password every case below hides; no message may contain it.
const testRedisPassword = "s3cr3t-pw"

// TestRedisOptions: --redis-addr takes host:port as before and redis:// and rediss://
// URLs, and a bad one is refused with a message that names the fault, not the password.
func TestRedisOptions(t *testing.T) {
	pw := testRedisPassword
	for _, tc := range []struct {
		name     string
		addr     string
		db       int
		wantAddr string
		wantDB   int
		wantUser string
		wantPW   string
		wantTLS  bool
	}{
		{"host:port", "127.0.0.1:6379", 0, "127.0.0.1:6379", 0, "", "", false},
		{"host:port and --redis-db", "redis.internal:6380", 4, "redis.internal:6380", 4, "", "", false},
		{"URL with password and database", "redis://:" + pw + "@10.0.0.5:6380/2", 0, "10.0.0.5:6380", 2, "", pw, false},
		{"URL with user (ACL)", "redis://ledger:" + pw + "@h:6379", 0, "h:6379", 0, "ledger", pw, false},
		{"URL without database takes --redis-db", "redis://:" + pw + "@h:6379", 7, "h:6379", 7, "", pw, false},
		{"URL and --redis-db agree", "redis://:" + pw + "@h:6379/7", 7, "h:6379", 7, "", pw, false},
		{"db parameter", "redis://h:6379?db=3", 0, "h:6379", 3, "", "", false},
		{"TLS", "rediss://:" + pw + "@cache.example.com:6380/1", 0, "cache.example.com:6380", 1, "", pw, true},
		{"percent-encoded password", "redis://:p%40ss%3Aw@h:6379", 0, "h:6379", 0, "", "p@ss:w", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o, err := redisOptions(tc.addr, tc.db, "")
			if err != nil {
				t.Fatalf("redisOptions(%q): %v", redactRedisAddr(tc.addr), err)
			}
			if o.Addr != tc.wantAddr || o.DB != tc.wantDB || o.Username != tc.wantUser || o.Password != tc.wantPW {
				t.Errorf("want addr %s db %d user %q password %q, got addr %s db %d user %q password %q",
					tc.wantAddr, tc.wantDB, tc.wantUser, tc.wantPW, o.Addr, o.DB, o.Username, o.Password)
			}
			if (o.TLSConfig != nil) != tc.wantTLS {
				t.Fatalf("want TLS %v, got %v", tc.wantTLS, o.TLSConfig != nil)
			}
			if tc.wantTLS && (o.TLSConfig.ServerName != "cache.example.com" || o.TLSConfig.InsecureSkipVerify) {
				t.Errorf("TLS must verify the server's name: got ServerName %q, InsecureSkipVerify %v", o.TLSConfig.ServerName, o.TLSConfig.InsecureSkipVerify)
			}
		})
	}

	caFile := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(caFile, []byte("not PEM"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, addr string
		db         int
		caFile     string
		want       string
	}{
		{"neither host:port nor URL", "localhost", 0, "", `"localhost" is not host:port nor a redis:// or rediss:// URL`},
		{"password without a scheme", ":" + pw + "@h:6379", 0, "", `"***@h:6379" is not host:port`},
		{"password before a stray ://", "u:" + pw + "@h:6379?x=a://b", 0, "", "***@h:6379?x=a://b"},
		{"other scheme", "http://:" + pw + "@h:6379", 0, "", "the scheme must be redis:// or rediss://"},
		{"unix socket", "unix:///run/redis.sock", 0, "", "the scheme must be redis:// or rediss://"},
		{"bad database", "redis://:" + pw + "@h:6379/two", 0, "", `invalid database number: "two"`},
		{"bad port", "redis://:" + pw + "@h:port", 0, "", "redis://***@h:port does not parse"},
		{"bad escape in the password", "redis://:" + pw + "%zz@h:6379", 0, "", "does not parse in its user or password part"},
		{"raw / in the password", "redis://:" + pw + "/x@h:6379", 0, "", "redis://***@h:6379"},
		{"TLS without verification", "rediss://:" + pw + "@h:6380?skip_verify=true", 0, "", "turns certificate verification off (skip_verify)"},
		{"unknown parameter", "redis://:" + pw + "@h:6379?timeout=1s", 0, "", "unexpected option: timeout"},
		{"URL and --redis-db disagree", "redis://:" + pw + "@h:6379/2", 5, "", "names database 2 but --redis-db says 5"},
		{"CA file without TLS", "redis://:" + pw + "@h:6379", 0, caFile, "--redis-ca-file needs TLS"},
		{"CA file without TLS, host:port", "h:6379", 0, caFile, "--redis-ca-file needs TLS"},
		{"CA file not PEM", "rediss://:" + pw + "@h:6379", 0, caFile, "holds no PEM certificate"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := redisOptions(tc.addr, tc.db, tc.caFile)
			if err == nil {
				t.Fatalf("want %q refused", redactRedisAddr(tc.addr))
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("want the error to say %q, got: %v", tc.want, err)
			}
			if strings.Contains(err.Error(), pw) {
				t.Errorf("the error shows the password: %v", err)
			}
		})
	}
}

// writeSecret writes a secret file with the given permissions (umask aside).
func writeSecret(t *testing.T, dir, name, content string, perm os.FileMode) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, perm); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestServeSecretFiles: the DSN and the Redis address can come from files; a file other
// users can read, a secret given both ways, and an empty file are refused before anything
// is dialled, each with what fixes it and never with the secret.
func TestServeSecretFiles(t *testing.T) {
	certFile, keyFile := testCert(t)
	dir := t.TempDir()
	const dsn = "postgres://securepay:" + testRedisPassword + "@127.0.0.1:1/securepay"
	redisURL := "redis://:" + testRedisPassword + "@127.0.0.1:1/3"
	dsnFile := writeSecret(t, dir, "dsn", dsn+"\n", 0o600)
	redisFile := writeSecret(t, dir, "redis", "  "+redisURL+"\n", 0o400)
	openDSN := writeSecret(t, dir, "dsn-644", dsn, 0o644)
	groupRedis := writeSecret(t, dir, "redis-640", redisURL, 0o640)
	empty := writeSecret(t, dir, "empty", "\n", 0o600)
	tlsArgs := []string{"--listen", "127.0.0.1:0", "--tls-cert", certFile, "--tls-key", keyFile}
	for _, tc := range []struct {
		name string
		args []string
		env  map[string]string
		want []string
	}{
		{"DSN file readable by others", []string{"--postgres-dsn-file", openDSN, "--redis-addr-file", redisFile}, nil,
			[]string{"--postgres-dsn-file", "can be read by other users (mode 0644)", "chmod 600 " + openDSN}},
		{"Redis file readable by the group, from the environment", []string{"--postgres-dsn-file", dsnFile},
			map[string]string{"SECUREPAY_REDIS_ADDR_FILE": groupRedis},
			[]string{"--redis-addr-file", "(mode 0640)", "chmod 600 " + groupRedis}},
		{"DSN as value and file", []string{"--postgres-dsn", dsn, "--postgres-dsn-file", dsnFile, "--redis-addr-file", redisFile}, nil,
			[]string{"the PostgreSQL DSN is given twice", "keep one, the file"}},
		{"DSN in the environment and a file flag", []string{"--postgres-dsn-file", dsnFile, "--redis-addr-file", redisFile},
			map[string]string{"SECUREPAY_POSTGRES_DSN": dsn}, []string{"the PostgreSQL DSN is given twice"}},
		{"Redis URL as value and file", []string{"--postgres-dsn-file", dsnFile, "--redis-addr", redisURL},
			map[string]string{"SECUREPAY_REDIS_ADDR_FILE": redisFile}, []string{"the Redis address is given twice"}},
		{"empty file", []string{"--postgres-dsn-file", empty, "--redis-addr-file", redisFile}, nil, []string{empty + " is empty"}},
		{"missing file", []string{"--postgres-dsn-file", filepath.Join(dir, "nope"), "--redis-addr-file", redisFile}, nil,
			[]string{"no such file or directory"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			getenv := func(k string) string { return tc.env[k] }
			err := run(context.Background(), append(append([]string{"serve"}, tc.args...), tlsArgs...), io.Discard, io.Discard, getenv)
			if err == nil {
				t.Fatal("want serve to refuse the configuration, it started")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("want the error to say %q, got:\n%v", w, err)
				}
			}
			if strings.Contains(err.Error(), testRedisPassword) {
				t.Errorf("the error shows a secret:\n%v", err)
			}
		})
	}

	// Read from files, both secrets pass validation and arrive whole (trimmed).
	c := serveConfig{Listen: "127.0.0.1:0", PostgresDSNFile: dsnFile, RedisAddrFile: redisFile, TLSCert: certFile, TLSKey: keyFile,
		IdemTTL: 1, MaxStreams: 1, MaxReqBytes: 1, ReqTimeout: 1, Shutdown: 1, RedisTimeout: 1}
	if err := c.Validate(); err != nil {
		t.Fatalf("secrets from private files: %v", err)
	}
	if c.PostgresDSN != dsn || c.redisOpts.Password != testRedisPassword || c.redisOpts.DB != 3 {
		t.Fatalf("want the DSN and the Redis URL read from their files, got DSN ok=%v, Redis password ok=%v db %d",
			c.PostgresDSN == dsn, c.redisOpts.Password == testRedisPassword, c.redisOpts.DB)
	}
	if err := c.Validate(); err != nil {
		t.Fatalf("a second Validate of a config whose secrets came from files: %v", err)
	}

	// migrate reads the same file and refuses the same way.
	err := run(context.Background(), []string{"migrate", "--postgres-dsn-file", openDSN}, io.Discard, io.Discard, noEnv)
	if err == nil || !strings.Contains(err.Error(), "chmod 600 "+openDSN) {
		t.Fatalf("migrate with a DSN file others can read: want it refused with the chmod, got %v", err)
	}
}

// TestServeHelpShowsNoSecret: -h names the variables, never their values.
func TestServeHelpShowsNoSecret(t *testing.T) {
	env := map[string]string{
		"SECUREPAY_REDIS_ADDR":   "rediss://:" + testRedisPassword + "@h:6380",
		"SECUREPAY_POSTGRES_DSN": "postgres://u:" + testRedisPassword + "@h/db",
	}
	code, out, errOut := execCLI(func(k string) string { return env[k] }, "serve", "-h")
	if code != 0 || !strings.Contains(out, "--redis-addr-file") || !strings.Contains(out, "$SECUREPAY_POSTGRES_DSN_FILE") {
		t.Fatalf("serve -h: want the file flags documented, got code %d:\n%s%s", code, out, errOut)
	}
	if strings.Contains(out+errOut, testRedisPassword) {
		t.Fatalf("serve -h shows a password:\n%s%s", out, errOut)
	}
}

// FuzzRedisErrorsHideThePassword: whatever surrounds it, a password before the address's
// last @ appears in no error of redisOptions.
func FuzzRedisErrorsHideThePassword(f *testing.F) {
	for _, seed := range [][3]string{
		{"redis://", "h:6379/2", ""},
		{"rediss://u", "h:port", ""},
		{"http://", "h:1", "x"},
		{"", "h:6379", ""},
		{"redis://", "h:6379/two?db=x", "%zz"},
		{"redis:/", "[::1", "/"},
	} {
		f.Add(seed[0], seed[1], seed[2])
	}
	const pw = "Pw9qXz7Lk"
	f.Fuzz(func(t *testing.T, before, after, inPW string) {
		if strings.Contains(after, "@") || strings.Contains(before+after+inPW, pw) {
			t.Skip("the password is not the only secret-looking part")
		}
		addr := before + ":" + pw + inPW + "@" + after
		_, err := redisOptions(addr, 0, "")
		if err != nil && strings.Contains(err.Error(), pw) {
			t.Fatalf("redisOptions(%q): the error shows the password: %v", addr, err)
		}
	})
}
