package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
)

// TestServeGatewayRefusesAnUnsafeConfiguration: every missing or unsafe setting is named
// at once, with the flag that fixes it, before anything is started.
func TestServeGatewayRefusesAnUnsafeConfiguration(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		want []string
	}{
		{"nothing", nil, []string{"--oidc-issuer", "--oidc-audience", "--oidc-jwks-url", "--spiffe-socket", "--payments-url", "--queries-url", "--audit-url", "--redis-addr", "--tls-cert"}},
		{"plaintext components", []string{"--payments-url", "http://payments:8443", "--oidc-jwks-url", "http://issuer/certs"},
			[]string{`--payments-url "http://payments:8443" must be an https:// URL`, `--oidc-jwks-url "http://issuer/certs" must be an https:// URL`}},
		{"no rate", []string{"--rate-limit", "0"}, []string{"--rate-limit"}},
		{"bad trust domain", []string{"--trust-domain", "Not A Domain"}, []string{"--trust-domain"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out, errOut bytes.Buffer
			err := run(context.Background(), append([]string{"serve", "gateway"}, tc.args...), &out, &errOut, noEnv)
			if err == nil {
				t.Fatal("serve gateway started with an unusable configuration")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("the refusal does not name %q:\n%v", w, err)
				}
			}
		})
	}
}
