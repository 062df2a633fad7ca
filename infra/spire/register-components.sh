#!/usr/bin/env bash
# Registers SecurePay's components with a SPIRE server: one registration entry per
# component, so that each gets the SVID its peers' policies name
# (spiffe://TRUST_DOMAIN/gateway, /payments, /queries, /audit, /projector, /relay).
#
#   register-components.sh unix PARENT_ID       # VMs/systemd: one OS user per component,
#                                               # selector unix:user:securepay-COMPONENT
#   register-components.sh k8s PARENT_ID [NS]   # Kubernetes: one service account per
#                                               # component in namespace NS (default
#                                               # securepay), selectors k8s:ns + k8s:sa
#
# PARENT_ID is the SPIFFE ID of the agents allowed to issue these SVIDs: a node alias
# such as spiffe://securepay.dev/node/prod (create it once with
# `spire-server entry create -node -spiffeID ... -selector k8s_psat:cluster:NAME`), or a
# single agent's ID. Entries that already exist are left alone, so the script can be
# rerun after adding a component.
#
# Environment: SPIRE_SERVER (the spire-server binary; default spire-server on PATH),
# SPIRE_SERVER_SOCKET (default /tmp/spire-server/private/api.sock, SPIRE's own default),
# TRUST_DOMAIN (default securepay.dev), X509_SVID_TTL (optional per-entry TTL, e.g. 1h),
# DRY_RUN=1 prints the commands instead of running them.
set -euo pipefail

COMPONENTS=(gateway payments queries audit projector relay)
server=${SPIRE_SERVER:-spire-server}
socket=${SPIRE_SERVER_SOCKET:-/tmp/spire-server/private/api.sock}
td=${TRUST_DOMAIN:-securepay.dev}

die() { printf 'register-components.sh: error: %s\n' "$*" >&2; exit 1; }

mode=${1:-}
parent=${2:-}
ns=${3:-securepay}
[[ $mode == unix || $mode == k8s ]] || die "usage: register-components.sh unix|k8s PARENT_ID [NAMESPACE]"
[[ $parent == spiffe://$td/* ]] || die "PARENT_ID must be an ID of trust domain $td, got '$parent'"

run() {
	if [[ ${DRY_RUN:-} == 1 ]]; then
		printf '%q ' "$@"
		printf '\n'
	else
		"$@"
	fi
}

for c in "${COMPONENTS[@]}"; do
	id=spiffe://$td/$c
	case $mode in
	unix) selectors=(-selector "unix:user:securepay-$c") ;;
	k8s) selectors=(-selector "k8s:ns:$ns" -selector "k8s:sa:$c") ;;
	esac
	ttl=()
	[[ -z ${X509_SVID_TTL:-} ]] || ttl=(-x509SVIDTTL "$X509_SVID_TTL")
	if [[ ${DRY_RUN:-} != 1 ]] &&
		"$server" entry show -socketPath "$socket" -parentID "$parent" -spiffeID "$id" "${selectors[@]}" |
		grep -q '^Entry ID'; then
		printf '%s: already registered\n' "$id"
		continue
	fi
	run "$server" entry create -socketPath "$socket" -parentID "$parent" -spiffeID "$id" "${selectors[@]}" "${ttl[@]}"
done
