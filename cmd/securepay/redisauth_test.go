package main

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// authRedis is a redis-server of the test's own that demands a password and, with TLS,
// speaks only TLS: what `securepay serve` meets at a managed Redis.
type authRedis struct {
	addr   string // 127.0.0.1:port
	caFile string // the CA that signed the server's certificate ("" without TLS)
	opts   *redis.Options
}

// startAuthRedis starts redis-server on a free loopback port in a temporary directory,
// with --requirepass and, when withTLS, on a TLS port only, with a certificate from a
// throw-away CA. It is stopped when the test ends. A machine without redis-server skips
// (fatal under CI=true, like startOwnServer); a redis-server built without TLS skips the
// TLS case and says so, never pretending.
func startAuthRedis(t *testing.T, password string, withTLS bool) *authRedis {
	t.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("redis-server is not installed: %v", err)
		}
		t.Skipf("redis-server is not installed (infra/local/redis.sh installs it; CI=true makes this fatal): %v", err)
	}
	dir := t.TempDir()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	r := &authRedis{addr: fmt.Sprintf("127.0.0.1:%d", port)}
	args := []string{"--bind", "127.0.0.1", "--requirepass", password, "--save", "", "--appendonly", "no",
		"--dir", dir, "--logfile", filepath.Join(dir, "redis.log")}
	r.opts = &redis.Options{Addr: r.addr, Password: password, MaxRetries: -1}
	if withTLS {
		caFile, certFile, keyFile := testCAAndServerCert(t, dir)
		r.caFile = caFile
		// Only the TLS port listens: a client that falls back to plain TCP finds nothing.
		// Clients present no certificate, as with managed Redis services (AUTH is the
		// client's credential); serve has no Redis client certificate to offer.
		args = append(args, "--port", "0", "--tls-port", fmt.Sprint(port), "--tls-cert-file", certFile,
			"--tls-key-file", keyFile, "--tls-ca-cert-file", caFile, "--tls-auth-clients", "no")
		pem, err := os.ReadFile(caFile)
		if err != nil {
			t.Fatal(err)
		}
		roots := x509.NewCertPool()
		roots.AppendCertsFromPEM(pem)
		r.opts.TLSConfig = &tls.Config{RootCAs: roots, ServerName: "127.0.0.1", MinVersion: tls.VersionTLS12}
	} else {
		args = append(args, "--port", fmt.Sprint(port))
	}
	cmd := exec.Command(bin, args...)
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatalf("start redis-server: %v", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
	})
	rdb := redis.NewClient(r.opts)
	defer rdb.Close()
	deadline := time.Now().Add(15 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		err := rdb.Ping(ctx).Err()
		cancel()
		if err == nil {
			return r
		}
		select {
		case werr := <-exited:
			log, _ := os.ReadFile(filepath.Join(dir, "redis.log"))
			msg := out.String() + string(log)
			if withTLS && strings.Contains(msg, "tls") && !strings.Contains(msg, "Ready to accept") {
				t.Skipf("this redis-server cannot serve TLS (built without it?), so TLS to Redis is not tested here: %v\n%s", werr, msg)
			}
			t.Fatalf("redis-server exited: %v\n%s", werr, msg)
		default:
		}
		if time.Now().After(deadline) {
			log, _ := os.ReadFile(filepath.Join(dir, "redis.log"))
			t.Fatalf("redis-server on %s does not answer within 15s: %v\n%s", r.addr, err, log)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// testCAAndServerCert writes a throw-away CA and a certificate it signed for 127.0.0.1,
// as PEM files private to their owner.
func testCAAndServerCert(t *testing.T, dir string) (caFile, certFile, keyFile string) {
	t.Helper()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "securepay test Redis CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		t.Fatal(err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2),
		Subject:      pkix.Name{CommonName: "127.0.0.1"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		IPAddresses:  []net.IP{net.ParseIP("127.0.0.1")},
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	caFile, certFile, keyFile = filepath.Join(dir, "ca.pem"), filepath.Join(dir, "redis.pem"), filepath.Join(dir, "redis-key.pem")
	for name, block := range map[string]*pem.Block{
		caFile:   {Type: "CERTIFICATE", Bytes: caDER},
		certFile: {Type: "CERTIFICATE", Bytes: der},
		keyFile:  {Type: "EC PRIVATE KEY", Bytes: keyDER},
	} {
		if err := os.WriteFile(name, pem.EncodeToMemory(block), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return caFile, certFile, keyFile
}

// TestServeWithRedisAuthAndTLS runs `securepay serve` against a real Redis that demands a
// password (and, in the TLS case, speaks only TLS with a certificate from a private CA),
// the URL with the password read from a private file. A replayed Idempotency-Key proves
// the keys went through that Redis; the password appears in no log line. A wrong password
// and an unverifiable certificate stop serve at start, saying why without the password.
func TestServeWithRedisAuthAndTLS(t *testing.T) {
	const password = "p4ss-for-the-redis-test"
	for _, tc := range []struct {
		name   string
		scheme string
		tls    bool
	}{
		{"AUTH", "redis", false},
		{"AUTH over TLS", "rediss", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rs := startAuthRedis(t, password, tc.tls)
			dsn := migrateForServing(t, freshDatabase(t), io.Discard)
			certFile, keyFile := testCert(t)
			secrets := t.TempDir()
			urlFile := writeSecret(t, secrets, "redis-url", fmt.Sprintf("%s://:%s@%s/5\n", tc.scheme, password, rs.addr), 0o600)
			wrongFile := writeSecret(t, secrets, "redis-url-wrong", fmt.Sprintf("%s://:not-%s@%s/5", tc.scheme, password, rs.addr), 0o600)
			args := func(redisFile string, withCA bool) []string {
				a := []string{"serve", "--listen", "127.0.0.1:0", "--postgres-dsn", dsn, "--redis-addr-file", redisFile,
					"--tls-cert", certFile, "--tls-key", keyFile}
				if withCA {
					a = append(a, "--redis-ca-file", rs.caFile)
				}
				return a
			}

			refused := func(what string, a []string, want string) {
				t.Helper()
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				defer cancel()
				var logs strings.Builder
				err := run(ctx, a, io.Discard, &logs, noEnv)
				if err == nil || !strings.Contains(err.Error(), want) {
					t.Fatalf("%s: want serve to refuse to start with %q, got %v", what, want, err)
				}
				if strings.Contains(err.Error()+logs.String(), password) {
					t.Fatalf("%s: the password is shown:\n%v\n%s", what, err, logs.String())
				}
			}
			refused("wrong password", args(wrongFile, tc.tls), "WRONGPASS")
			if tc.tls {
				refused("certificate from an unknown CA", args(urlFile, false), "certificate signed by unknown authority")
			}

			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			pr, pw := io.Pipe()
			done := make(chan error, 1)
			go func() {
				done <- run(ctx, args(urlFile, tc.tls), io.Discard, pw, noEnv)
				pw.Close()
			}()
			logs := &logLines{}
			serving := make(chan map[string]any, 1)
			go func() {
				sc := bufio.NewScanner(pr)
				for sc.Scan() {
					logs.add(sc.Text())
					var rec map[string]any
					if json.Unmarshal(sc.Bytes(), &rec) == nil && rec["msg"] == "securepay serving" {
						serving <- rec
					}
				}
			}()
			var rec map[string]any
			select {
			case rec = <-serving:
			case err := <-done:
				t.Fatalf("securepay serve ended before listening: %v", err)
			case <-time.After(30 * time.Second):
				t.Fatal("securepay serve did not start listening within 30s")
			}
			if rec["redis"] != rs.addr || rec["redis_tls"] != tc.tls || rec["redis_db"] != float64(5) {
				t.Errorf("the serving line: want redis %s, redis_tls %v, redis_db 5, got %v", rs.addr, tc.tls, rec)
			}
			server := "https://" + rec["addr"].(string)
			c := func(args ...string) string {
				t.Helper()
				out, err := cli(t, server, append(args, "--ca-file", certFile)...)
				if err != nil {
					// serve's log says what the client could not: which dependency failed.
					logs.mu.Lock()
					defer logs.mu.Unlock()
					t.Fatalf("securepay %s: %v\nserve's log:\n%s", strings.Join(args, " "), err, strings.Join(logs.raw, "\n"))
				}
				return out
			}
			c("account", "open", "world", "--kind", "external")
			c("account", "open", "alice")
			transfer := []string{"transfer", "--from", "world", "--to", "alice", "--amount", "1.00", "--id", "auth-1", "--idempotency-key", "k-auth-1", "--json"}
			first := c(transfer...)
			if replay := c(transfer...); replay != first {
				t.Fatalf("replay with the same Idempotency-Key: want the stored response, got\n%s\nfirst\n%s", replay, first)
			}
			// The keys are in this Redis's database 5: serve used the URL, password and all.
			rdb := redis.NewClient(&redis.Options{Addr: rs.opts.Addr, Password: password, DB: 5, TLSConfig: rs.opts.TLSConfig})
			defer rdb.Close()
			rctx, rcancel := context.WithTimeout(ctx, 5*time.Second)
			n, err := rdb.DBSize(rctx).Result()
			rcancel()
			if err != nil || n == 0 {
				t.Errorf("want serve's keys in database 5 of the password-protected Redis, got %d keys, %v", n, err)
			}

			cancel()
			select {
			case err := <-done:
				if err != nil && !errors.Is(err, context.Canceled) {
					t.Fatalf("securepay serve: want a clean stop, got %v", err)
				}
			case <-time.After(40 * time.Second):
				t.Fatal("securepay serve did not stop within 40s")
			}
			logs.mu.Lock()
			defer logs.mu.Unlock()
			for _, l := range logs.raw {
				if strings.Contains(l, password) {
					t.Fatalf("a log line shows the Redis password: %s", l)
				}
			}
		})
	}
}
