#!/usr/bin/env bash
# Builds the Kubernetes binaries of the kube lab from their Go modules, at the pins below:
# etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kube-proxy and kubectl. Each comes from a
# wrapper Go module in scripts/kube/ (etcd/ and kubernetes/), whose committed go.mod and
# go.sum fix every dependency. The binaries go to a cache outside the repository,
#
#   ${ZONEBENCH_KUBE_CACHE:-$HOME/.cache/zonebench/kube}/<kube>-etcd<etcd>/bin/
#
# and a binary already there (and answering --version with its pin) is not built again.
# The bin directory is the last line on stdout, everything else goes to stderr:
#
#   BIN=$(scripts/kube-binaries.sh)       # build what is missing, print the bin directory
#   scripts/kube-binaries.sh --force      # rebuild all six
#   scripts/kube-binaries.sh --regen      # after changing a pin below: regenerate
#                                         # scripts/kube/*/go.mod and go.sum (no build)
#
# --regen reads the go.mod of the k8s.io/kubernetes release, takes each of its
# "k8s.io/<staging> v0.0.0" requirements and replaces it with the matching v0.X.Y tag,
# then lets `go mod tidy` write go.sum. Needs Go (GO=/path/to/go to choose one) at least
# as new as the wrapper modules' go lines, and the Go module proxy for a cold build.
# Builds run under `nice -n 19` with `go build -p 2`, so they do not starve other work,
# with GOTOOLCHAIN=local, GOWORK=off and GOFLAGS emptied; GOPROXY, GOCACHE, GOMODCACHE
# are left as they are.
set -euo pipefail

KUBE_VERSION=v1.36.5 # k8s.io/kubernetes; its staging modules (k8s.io/api, ...) at v0.36.5
ETCD_VERSION=v3.6.16 # go.etcd.io/etcd/server/v3

here=$(cd "$(dirname "$0")" && pwd)
kube_dir=$here/kube/kubernetes
etcd_dir=$here/kube/etcd
staging_version=v0.${KUBE_VERSION#v1.}
version_tag=${KUBE_VERSION}-etcd${ETCD_VERSION#v}
cache=${ZONEBENCH_KUBE_CACHE:-${HOME:?HOME is not set; set ZONEBENCH_KUBE_CACHE}/.cache/zonebench/kube}
bin=$cache/$version_tag/bin

# name, wrapper module, package built
binaries=(
  "etcd $etcd_dir go.etcd.io/etcd/server/v3"
  "kube-apiserver $kube_dir k8s.io/kubernetes/cmd/kube-apiserver"
  "kube-controller-manager $kube_dir k8s.io/kubernetes/cmd/kube-controller-manager"
  "kube-scheduler $kube_dir k8s.io/kubernetes/cmd/kube-scheduler"
  "kube-proxy $kube_dir k8s.io/kubernetes/cmd/kube-proxy"
  "kubectl $kube_dir k8s.io/kubernetes/cmd/kubectl"
)

log() { printf 'kube-binaries: %s\n' "$*" >&2; }
die() {
  printf 'kube-binaries: error: %s\n' "$*" >&2
  exit 1
}

usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; }

regen=false
force=false
while (($#)); do
  case "$1" in
    --regen) regen=true ;;
    --force) force=true ;;
    -h | --help)
      usage
      exit 0
      ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
  shift
done

# --- Go ---------------------------------------------------------------------------------

GO=${GO:-}
go_ready=false

# The `go` line of a go.mod file.
go_line() { awk '$1 == "go" { print $2; exit }' "$1"; }

# Finds Go and checks that it is new enough for the wrapper modules (or for $1).
setup_go() {
  $go_ready && return 0
  if [[ -z $GO ]]; then
    if command -v go >/dev/null 2>&1; then
      GO=$(command -v go)
    elif [[ -x /usr/local/go/bin/go ]]; then
      GO=/usr/local/go/bin/go
    else
      die "go not found: install Go (https://go.dev/dl/) or set GO=/path/to/go"
    fi
  fi
  [[ -x $GO ]] || die "GO=$GO is not an executable"
  # Our own flags only: no toolchain download behind our back, no go.work, no GOFLAGS.
  export GOTOOLCHAIN=local GOWORK=off GOFLAGS=
  local have need=${1:-}
  have=$("$GO" env GOVERSION) || die "'$GO env GOVERSION' failed"
  have=${have#go}
  if [[ -z $need ]]; then
    local f v
    need=1.24 # the tool directive
    for f in "$kube_dir/go.mod" "$etcd_dir/go.mod"; do
      [[ -f $f ]] || die "$f is missing (scripts/kube-binaries.sh --regen writes it)"
      v=$(go_line "$f")
      [[ -n $v ]] && need=$(max_version "$need" "$v")
    done
  fi
  if [[ $(max_version "$have" "$need") != "$have" ]]; then
    die "$GO is go$have; these modules need go$need or newer (set GO=/path/to/go)"
  fi
  log "using $GO (go$have)"
  go_ready=true
}

max_version() { printf '%s\n' "$@" | sort -V | tail -n 1; }

# Runs go politely: lowest priority; go build gets -p 2 from its caller.
go_nice() { nice -n 19 "$GO" "$@"; }

# --- pins and wrapper modules -------------------------------------------------------------

# The version that go.mod $1 requires of module $2 (both require forms).
required_version() {
  awk -v m="$2" '
    /^require[[:space:]]*\(/ { block = 1; next }
    block && /^\)/ { block = 0; next }
    block && $1 == m { print $2; exit }
    !block && $1 == "require" && $2 == m { print $3; exit }
  ' "$1"
}

# Fails unless the committed go.mod files agree with the pins at the top of this script.
check_pins() {
  local f=$kube_dir/go.mod g=$etcd_dir/go.mod have bad
  [[ -f $f && -f $kube_dir/go.sum ]] || die "$kube_dir/go.mod or go.sum is missing: run $0 --regen"
  [[ -f $g && -f $etcd_dir/go.sum ]] || die "$etcd_dir/go.mod or go.sum is missing: run $0 --regen"
  have=$(required_version "$f" k8s.io/kubernetes)
  [[ $have == "$KUBE_VERSION" ]] ||
    die "$f requires k8s.io/kubernetes ${have:-nothing}, the pin is $KUBE_VERSION: run $0 --regen"
  # every "k8s.io/x => k8s.io/x vA.B.C" must point at the staging version
  bad=$(awk -v want="$staging_version" '$2 == "=>" && $1 ~ /^k8s\.io\// && $4 != want { print $1 " => " $4 }' "$f")
  [[ -z $bad ]] || die "$f replaces staging modules with another version than $staging_version: $bad; run $0 --regen"
  have=$(required_version "$g" go.etcd.io/etcd/server/v3)
  [[ $have == "$ETCD_VERSION" ]] ||
    die "$g requires go.etcd.io/etcd/server/v3 ${have:-nothing}, the pin is $ETCD_VERSION: run $0 --regen"
}

# `go mod download -json` of $1 and prints the path of its go.mod in the module cache.
download_gomod() {
  local json path
  json=$(go_nice mod download -json "$1") || die "could not download $1 from the Go module proxy"
  path=$(sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",\{0,1\}$/\1/p' <<<"$json")
  [[ -n $path && -f $path ]] || die "go mod download -json $1 named no go.mod file"
  printf '%s\n' "$path"
}

# The requirements of go.mod $1 as "path version" lines, comments dropped.
requirements() {
  awk '
    { line = $0; sub(/\/\/.*/, "", line); n = split(line, f) }
    f[1] == "require" && f[2] == "(" { block = 1; next }
    block && f[1] == ")" { block = 0; next }
    block && n >= 2 { print f[1], f[2] }
    !block && f[1] == "require" && n >= 3 { print f[2], f[3] }
  ' "$1"
}

# The godebug lines (single or block) of go.mod $1, as they are.
godebug_lines() {
  awk '
    /^godebug[[:space:]]*\(/ { block = 1 }
    block || /^godebug[[:space:]]/ { print }
    block && /^\)/ { block = 0 }
  ' "$1"
}

# Writes go.mod text from stdin into a scratch module, tidies it, and moves go.mod and
# go.sum into wrapper directory $1. Prints the scratch directory for checks (caller removes).
tidy_into() {
  local dir=$1 tmp
  tmp=$(mktemp -d "${TMPDIR:-/tmp}/kube-binaries-regen.XXXXXX")
  cat >"$tmp/go.mod"
  log "go mod tidy for $(basename "$dir") (downloads the dependencies on a cold module cache)"
  (cd "$tmp" && go_nice mod tidy) >&2 || {
    rm -rf "$tmp"
    die "go mod tidy failed for the $(basename "$dir") wrapper module"
  }
  mkdir -p "$dir"
  cp "$tmp/go.mod" "$tmp/go.sum" "$dir/"
  printf '%s\n' "$tmp"
}

regen_kube() {
  local upstream staging go_version tmp replaces="" m mismatches
  log "regenerating $kube_dir from k8s.io/kubernetes@$KUBE_VERSION"
  upstream=$(download_gomod "k8s.io/kubernetes@$KUBE_VERSION")
  staging=$(requirements "$upstream" | awk '$1 ~ /^k8s\.io\// && $2 == "v0.0.0" { print $1 }')
  [[ -n $staging ]] || die "$upstream has no k8s.io/... v0.0.0 requirements: is $KUBE_VERSION a k8s.io/kubernetes release?"
  go_version=$(max_version 1.24 "$(go_line "$upstream")")
  for m in $staging; do replaces+=$'\t'"$m => $m $staging_version"$'\n'; done
  tmp=$(
    {
      cat <<EOF
// Generated by scripts/kube-binaries.sh --regen from the go.mod of
// k8s.io/kubernetes $KUBE_VERSION: do not edit, change the pin in the script instead.
// The release requires its staging modules at v0.0.0; each is replaced by its
// $staging_version tag.

module zonebench.invalid/kube-binaries/kubernetes

go $go_version

EOF
      if godebug_lines "$upstream" | grep -q .; then
        godebug_lines "$upstream"
        echo
      fi
      cat <<EOF
tool (
	k8s.io/kubernetes/cmd/kube-apiserver
	k8s.io/kubernetes/cmd/kube-controller-manager
	k8s.io/kubernetes/cmd/kube-proxy
	k8s.io/kubernetes/cmd/kube-scheduler
	k8s.io/kubernetes/cmd/kubectl
)

require k8s.io/kubernetes $KUBE_VERSION

replace (
${replaces})
EOF
    } | tidy_into "$kube_dir"
  )
  # The wrapper must select what the release itself builds with; say so where it does not.
  mismatches=$(
    cd "$tmp" && go_nice list -m -f '{{.Path}} {{.Version}}' all |
      awk 'NR == FNR { want[$1] = $2; next } ($1 in want) && want[$1] != "v0.0.0" && want[$1] != $2 { print "  " $1 ": release " want[$1] ", wrapper " $2 }' \
        <(requirements "$upstream") -
  ) || die "go list -m all failed in the regenerated kubernetes wrapper"
  rm -rf "$tmp"
  if [[ -n $mismatches ]]; then
    log "warning: the wrapper selects other versions than k8s.io/kubernetes $KUBE_VERSION requires:"
    printf '%s\n' "$mismatches" >&2
  fi
  log "wrote $kube_dir/go.mod and go.sum ($(wc -w <<<"$staging") staging modules at $staging_version)"
}

regen_etcd() {
  local upstream go_version tmp
  log "regenerating $etcd_dir from go.etcd.io/etcd/server/v3@$ETCD_VERSION"
  upstream=$(download_gomod "go.etcd.io/etcd/server/v3@$ETCD_VERSION")
  go_version=$(max_version 1.24 "$(go_line "$upstream")")
  tmp=$(
    tidy_into "$etcd_dir" <<EOF
// Generated by scripts/kube-binaries.sh --regen: do not edit, change the pin in the
// script instead. The etcd binary is the main package at the root of this module.

module zonebench.invalid/kube-binaries/etcd

go $go_version

tool go.etcd.io/etcd/server/v3

require go.etcd.io/etcd/server/v3 $ETCD_VERSION
EOF
  )
  rm -rf "$tmp"
  log "wrote $etcd_dir/go.mod and go.sum"
}

# --- build --------------------------------------------------------------------------------

# The line that binary $1 prints for its version when it is at its pin.
version_line() {
  case $1 in
    etcd) echo "etcd Version: ${ETCD_VERSION#v}" ;;
    kubectl) echo "Client Version: $KUBE_VERSION" ;;
    *) echo "Kubernetes $KUBE_VERSION" ;;
  esac
}

# Prints the version output of binary $2 (named $1) if it reports its pin; fails otherwise.
check_version() {
  local name=$1 path=$2 out want
  [[ -x $path ]] || return 1
  want=$(version_line "$name")
  if [[ $name == kubectl ]]; then
    out=$(timeout 30 "$path" version --client 2>&1) || return 1
  else
    out=$(timeout 30 "$path" --version 2>&1) || return 1
  fi
  grep -qxF "$want" <<<"$out" || return 1
  printf '%s\n' "$out"
}

kube_ldflags() {
  local v=${KUBE_VERSION#v} major minor date p flags="-s -w"
  major=${v%%.*}
  minor=${v#*.}
  minor=${minor%%.*}
  # The release's date, so that rebuilding gives the same binary.
  date=$(cd "$kube_dir" && "$GO" list -mod=readonly -m \
    -f '{{with .Time}}{{.UTC.Format "2006-01-02T15:04:05Z"}}{{end}}' k8s.io/kubernetes 2>/dev/null) || date=
  [[ -n $date ]] || date=$(date -u +%Y-%m-%dT%H:%M:%SZ)
  # What hack/lib/version.sh sets, for both copies of the version package.
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    flags+=" -X $p.gitVersion=$KUBE_VERSION -X $p.gitMajor=$major -X $p.gitMinor=$minor"
    flags+=" -X $p.gitTreeState=clean -X $p.buildDate=$date"
  done
  printf '%s\n' "$flags"
}

partial=""
trap '[[ -z $partial ]] || rm -f "$partial"' EXIT

build() {
  local name=$1 dir=$2 pkg=$3 ldflags=$4 tmp start
  tmp=$bin/.$name.partial.$$
  partial=$tmp
  start=$SECONDS
  log "building $name from $pkg (minutes on a cold Go cache)"
  if ! (cd "$dir" && CGO_ENABLED=0 go_nice build -p 2 -mod=readonly -buildvcs=false -trimpath \
    -ldflags "$ldflags" -o "$tmp" "$pkg") >&2; then
    rm -f "$tmp"
    die "building $name ($pkg in $dir) failed; the go output is above"
  fi
  if ! check_version "$name" "$tmp" >/dev/null; then
    rm -f "$tmp"
    die "$name was built but does not print '$(version_line "$name")' for its version"
  fi
  mv -f "$tmp" "$bin/$name"
  partial=""
  log "built $name in $((SECONDS - start))s"
}

main() {
  if $regen; then
    setup_go 1.24
    regen_etcd
    regen_kube
    check_pins
    log "regenerated; commit scripts/kube/, then run $0 to build"
    return 0
  fi
  check_pins

  local entry name dir pkg todo=()
  for entry in "${binaries[@]}"; do
    read -r name _ _ <<<"$entry"
    if $force || ! check_version "$name" "$bin/$name" >/dev/null; then
      todo+=("$entry")
    fi
  done

  if ((${#todo[@]})); then
    mkdir -p "$bin"
    # One build of a version at a time; a second caller waits, then finds the binaries.
    exec 9>"$cache/$version_tag/.lock"
    if ! flock -n 9; then
      log "another kube-binaries build of $version_tag is running; waiting for it"
      flock 9
    fi
    setup_go
    local kube_flags="" start=$SECONDS
    for entry in "${todo[@]}"; do
      read -r name dir pkg <<<"$entry"
      if ! $force && check_version "$name" "$bin/$name" >/dev/null; then
        continue # built by the run we waited for
      fi
      if [[ $name == etcd ]]; then
        build "$name" "$dir" "$pkg" "-s -w"
      else
        [[ -n $kube_flags ]] || kube_flags=$(kube_ldflags)
        build "$name" "$dir" "$pkg" "$kube_flags"
      fi
    done
    log "$version_tag built in $((SECONDS - start))s"
  else
    log "$version_tag: all binaries present"
  fi
  printf '%s\n' "$bin"
}

main
