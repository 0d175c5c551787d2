#!/usr/bin/env bash
# A 3-zone kind cluster for zonebench: one control plane and two workers in each of the
# zones a, b and c (label topology.kubernetes.io/zone), optionally with Cilium instead of
# kindnet, and the agent image built and loaded into it.
#
#   scripts/kind-cluster.sh                       # cluster "zonebench", kindnet, kube-proxy iptables
#   scripts/kind-cluster.sh --cilium              # Cilium with kube-proxy
#   scripts/kind-cluster.sh --cilium --no-kube-proxy   # Cilium's kube-proxy replacement
#   scripts/kind-cluster.sh --kube-proxy-mode nftables
#   scripts/kind-cluster.sh --delete              # remove it
#
# Needs docker (a running daemon), kind and kubectl; --cilium also needs the cilium CLI.
set -euo pipefail
cd "$(dirname "$0")/.."

name=zonebench
cilium=false
proxy_mode=iptables
build_image=true
image=zonebench-agent:dev
delete=false
while (($#)); do
  case "$1" in
    --name) name=$2; shift ;;
    --cilium) cilium=true ;;
    --no-kube-proxy) proxy_mode=none ;;
    --kube-proxy-mode) proxy_mode=$2; shift ;;
    --image) image=$2; shift ;;
    --no-build) build_image=false ;;
    --delete) delete=true ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    *) echo "kind-cluster.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

for tool in docker kind kubectl; do
  command -v "$tool" >/dev/null || { echo "kind-cluster.sh: $tool is not installed" >&2; exit 1; }
done
docker info >/dev/null 2>&1 || { echo "kind-cluster.sh: the docker daemon is not reachable" >&2; exit 1; }

if $delete; then
  kind delete cluster --name "$name"
  exit 0
fi
case "$proxy_mode" in iptables|nftables|ipvs|none) ;; *) echo "kind-cluster.sh: --kube-proxy-mode must be iptables, nftables, ipvs or none" >&2; exit 2 ;; esac
if [[ $proxy_mode == none ]] && ! $cilium; then
  echo "kind-cluster.sh: without kube-proxy, Services need --cilium (its kube-proxy replacement)" >&2; exit 2
fi
if $cilium; then
  command -v cilium >/dev/null || { echo "kind-cluster.sh: --cilium needs the cilium CLI" >&2; exit 1; }
fi

worker() {
  printf '  - role: worker\n    labels:\n      topology.kubernetes.io/zone: "%s"\n' "$1"
}
config=$(mktemp)
trap 'rm -f "$config"' EXIT
{
  echo "kind: Cluster"
  echo "apiVersion: kind.x-k8s.io/v1alpha4"
  echo "networking:"
  echo "  kubeProxyMode: \"$proxy_mode\""
  $cilium && echo "  disableDefaultCNI: true"
  echo "nodes:"
  echo "  - role: control-plane"
  for zone in a a b b c c; do worker "$zone"; done
} >"$config"

kind create cluster --name "$name" --config "$config" --wait 120s
if $cilium; then
  args=(--set kubeProxyReplacement=false)
  if [[ $proxy_mode == none ]]; then
    args=(--set kubeProxyReplacement=true --set k8sServiceHost="$name-control-plane" --set k8sServicePort=6443)
  fi
  cilium install --wait "${args[@]}"
fi
kubectl --context "kind-$name" wait --for=condition=Ready nodes --all --timeout=180s

if $build_image; then
  docker build -t "$image" .
fi
kind load docker-image "$image" --name "$name"

cat <<EOT
cluster kind-$name is up: zones a, b, c with two workers each.
  cargo run --release -p zonebench -- run --backend kube --context kind-$name --image $image
  cargo run --release -p zonebench -- render --discover --context kind-$name --image $image
  scripts/kind-cluster.sh --name $name --delete
EOT
