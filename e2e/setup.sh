#!/usr/bin/env bash
# Builds the real Kubernetes control plane the e2e suite runs against: etcd and kube-apiserver
# from their Go modules (e2e/kube/go.mod pins k8s.io/kubernetes v1.37.2 and, through it,
# go.etcd.io/etcd/server/v3), into $KALAM_E2E_BIN_DIR (default ~/.cache/kalamdb-e2e/bin).
# A build is reused while e2e/kube/go.sum and the mains are unchanged (their hash is stamped
# next to the binaries). About 6 minutes on 2 cores the first time; the modules come from the
# Go module proxy.
set -euo pipefail
cd "$(dirname "$0")/kube"
bin="${KALAM_E2E_BIN_DIR:-$HOME/.cache/kalamdb-e2e/bin}"
stamp="$(cat go.mod go.sum cmd/*/main.go ../setup.sh | sha256sum | cut -c1-16)"
if [ -x "$bin/etcd" ] && [ -x "$bin/kube-apiserver" ] && [ "$(cat "$bin/.stamp" 2>/dev/null)" = "$stamp" ]; then
  echo "e2e control plane up to date in $bin"
  exit 0
fi
mkdir -p "$bin"
echo "building etcd and kube-apiserver into $bin"
# The version kube-apiserver reports (/version, its emulation version) is stamped at link time.
version=-X=k8s.io/component-base/version
go build -trimpath \
  -ldflags="-s $version.gitVersion=v1.37.2 $version.gitMajor=1 $version.gitMinor=37 $version.gitTreeState=clean" \
  -o "$bin/" ./cmd/etcd ./cmd/kube-apiserver
echo "$stamp" > "$bin/.stamp"
"$bin/kube-apiserver" --version
