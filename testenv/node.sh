# shellcheck shell=bash
# The test environment's real node (`testenv/run --real-node`): Debian's containerd, runc
# and CNI plugins, and a kubelet built from the same k8s.io/kubernetes module as the API
# server, registered to the run's API server. Images are built here (no registry can be
# reached) and imported into the run's own containerd. Sourced by testenv/run.
#
# What the kubelet needs on this kind of machine (a VM with cgroup v1 controllers, root
# without CAP_SYS_RESOURCE):
# - `failCgroupV1: false` (Kubernetes 1.35 refuses cgroup v1 otherwise) and the cgroupfs
#   driver (no systemd);
# - containerd's `restrict_oom_score_adj`: the kubelet asks for -998 on pod sandboxes, and
#   lowering an OOM score needs CAP_SYS_RESOURCE, which root lacks here (runc's init fails
#   with "failed to update /proc/self/oom_score_adj: Permission denied");
# - a sandbox ("pause") image built from testenv/images/pause.c;
# - its own cgroup root, containerd socket, CNI bridge and pod subnet, so that two runs
#   never share them; a taint, so that only pods that ask for the real node run there
#   (the kwok nodes' DaemonSet pods would otherwise land on it too).
# Networking (no kube-proxy): pod addresses are on the run's bridge only (198.18.N.0/24,
# the benchmarking range), and the host reaches pods by their IP through it. The servers
# keep listening on loopback alone; pods reach the two they need through DNAT rules that
# match only packets entering from the run's bridge (route_localnet lets them go to
# 127.0.0.1): the `kubernetes` Service's ClusterIP (10.96.0.1:443) goes to the API server,
# and the bridge's gateway address on PostgreSQL's and TimescaleDB's ports goes to them.
# A FORWARD rule drops whatever a pod sends elsewhere: nothing is routed off the machine.
#
# The kubelet and the bridge plugin change a few kernel settings of the host
# (vm.overcommit_memory, kernel.panic*, kernel.keys.root_max*, net.ipv4.ip_forward); they
# are saved before the node starts and restored when it stops.

real_node_name=metricsstack-real-node
# Pods tolerate this taint to run on the real node.
real_node_taint=metricsstack.dev/real-node

# Debian's packages the real node needs, installed when missing.
ensure_node_packages() {
  local missing=()
  command -v containerd >/dev/null 2>&1 || missing+=(containerd)
  command -v runc >/dev/null 2>&1 || missing+=(runc)
  [ -x /usr/lib/cni/bridge ] || missing+=(containernetworking-plugins)
  command -v buildah >/dev/null 2>&1 || missing+=(buildah)
  command -v iptables >/dev/null 2>&1 || missing+=(iptables)
  command -v gcc >/dev/null 2>&1 || missing+=(gcc libc6-dev)
  [ ${#missing[@]} -eq 0 ] && return
  log "installing Debian's ${missing[*]}"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "${missing[@]}" >/dev/null ||
    die "installing ${missing[*]} failed"
}

# c_image NAME: an image holding one static binary built from testenv/images/NAME.c, run
# as nobody, as an OCI archive in the cache (keyed by the source's hash). Prints
# "ARCHIVE REFERENCE".
c_image() {
  local name=$1 src="$testenv_dir/images/$1.c" tag ref out work
  tag=$(files_hash "$src")
  ref="localhost/metricsstack-testenv/$name:$tag"
  out="$cache_root/images/$name-$tag.tar"
  if [ ! -e "$out" ]; then
    mkdir -p "$cache_root/images"
    work=$(mktemp -d)
    { gcc -static -Os -o "$work/$name" "$src" && strip "$work/$name"; } >&2 ||
      { rm -rf "$work"; die "compiling $src failed"; }
    printf 'FROM scratch\nCOPY %s /%s\nUSER 65534:65534\nENTRYPOINT ["/%s"]\n' "$name" "$name" "$name" \
      >"$work/Containerfile"
    local buildah=(buildah --root "$work/storage" --runroot "$work/run" --storage-driver vfs)
    { "${buildah[@]}" bud --isolation chroot -q -t "$ref" "$work" &&
      "${buildah[@]}" push -q "$ref" "oci-archive:$out.partial:$ref"; } >/dev/null 2>"$work/buildah.log" ||
      { cat "$work/buildah.log" >&2; rm -rf "$work" "$out.partial"; die "building the image $ref failed"; }
    mv "$out.partial" "$out"
    rm -rf "$work"
  fi
  echo "$out $ref"
}

# The ClusterIP the API server gives the `kubernetes` Service (first of 10.96.0.0/16).
kubernetes_service_ip=10.96.0.1

# The first 198.18.N.0/24 that no route uses yet.
free_pod_subnet() {
  local n
  for ((n = 0; n < 256; n++)); do
    if [ -z "$(ip -4 route show "198.18.$n.0/24" 2>/dev/null)" ]; then
      echo "198.18.$n"
      return
    fi
  done
  die "no free pod subnet in 198.18.0.0/16"
}

# Creates the run's bridge with its gateway address before any server starts. Sets
# node_dir, node_bridge, node_cgroup, node_subnet and node_gateway (the host's address on
# the bridge, as pods see it).
prepare_real_node_network() {
  local id bridge setting
  node_dir="$run_dir/node"
  mkdir -p "$node_dir"/{containerd,cni/net.d,cni/ipam,kubelet,pod-logs}
  id=$(printf '%s' "$run_dir" | sha256sum | cut -c1-9)
  node_cgroup="/metricsstack-testenv-$id"
  local value
  for setting in "${node_sysctls[@]}"; do
    value=$(sysctl -n "$setting" 2>/dev/null) && node_saved_sysctls+=("$setting=$value")
  done
  bridge="msn$id"
  # Choosing a free subnet and taking it is one step for concurrent runs.
  mkdir -p "$cache_root"
  exec 8>"$cache_root/.lock-pod-subnet"
  flock 8
  node_subnet=$(free_pod_subnet)
  node_gateway="$node_subnet.1"
  ip link add "$bridge" type bridge || die "creating the bridge $bridge failed"
  node_bridge=$bridge
  ip addr add "$node_gateway/24" dev "$node_bridge"
  ip link set "$node_bridge" up
  flock -u 8
  exec 8>&-
  sysctl -qw "net.ipv4.conf.$node_bridge.route_localnet=1"
  add_rule filter FORWARD -i "$node_bridge" ! -o "$node_bridge" -j DROP
}

# The kernel settings the kubelet and the bridge plugin change, restored at the end.
node_sysctls=(vm.overcommit_memory vm.panic_on_oom kernel.panic kernel.panic_on_oops
  kernel.keys.root_maxkeys kernel.keys.root_maxbytes net.ipv4.ip_forward)
node_saved_sysctls=()

# Rules added by add_rule ("TABLE CHAIN MATCH..."), deleted by stop_real_node.
node_rules=()

# add_rule TABLE CHAIN RULE...: inserts an iptables rule, remembered for the teardown.
add_rule() {
  local table=$1
  shift
  iptables -w -t "$table" -I "$@" || die "adding the iptables rule $* failed"
  node_rules+=("$table $*")
}

# forward_to_loopback ADDRESS PORT LOCAL_PORT: a pod's connection to ADDRESS:PORT reaches
# 127.0.0.1:LOCAL_PORT.
forward_to_loopback() {
  add_rule nat PREROUTING -i "$node_bridge" -d "$1/32" -p tcp --dport "$2" -j DNAT \
    --to-destination "127.0.0.1:$3"
}

# The node starts in three steps, so that the rest of the environment starts meanwhile:
# start_node_runtime (no API server needed), start_kubelet (once the API server is ready),
# wait_real_node.

# start_node_runtime [ARCHIVE...]: starts containerd and imports the sandbox image, the
# workload image and each OCI ARCHIVE into it in the background (wait_real_node waits for
# them). Sets node_socket and node_busy_image.
start_node_runtime() {
  local subnet=$node_subnet
  node_socket="$node_dir/containerd/containerd.sock"
  local pause_archive pause_ref busy_archive
  read -r pause_archive pause_ref < <(c_image pause)
  read -r busy_archive node_busy_image < <(c_image busy)

  cat >"$node_dir/containerd.toml" <<TOML
version = 2
root = "$node_dir/containerd/root"
state = "$node_dir/containerd/state"
[grpc]
  address = "$node_socket"
[ttrpc]
  address = "$node_socket.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "$node_dir/containerd/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$pause_ref"
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$node_dir/cni/net.d"
TOML
  cat >"$node_dir/cni/net.d/10-metricsstack.conflist" <<JSON
{"cniVersion": "1.0.0", "name": "metricsstack-testenv", "plugins": [
  {"type": "bridge", "bridge": "$node_bridge", "isGateway": true, "ipMasq": false, "hairpinMode": true,
   "ipam": {"type": "host-local", "ranges": [[{"subnet": "$subnet.0/24"}]], "routes": [{"dst": "0.0.0.0/0"}], "dataDir": "$node_dir/cni/ipam"}},
  {"type": "portmap", "capabilities": {"portMappings": true}}]}
JSON
  # In a session of its own: Ctrl-C reaches the whole process group, and containerd must
  # outlive the kubelet to remove the pods' containers (their shims stay behind otherwise).
  start containerd "$run_dir/containerd.log" setsid containerd --config "$node_dir/containerd.toml"
  wait_until containerd 30 ctr --address "$node_socket" version
  (
    for archive in "$pause_archive" "$busy_archive" "$@"; do
      ctr --address "$node_socket" -n k8s.io images import "$archive" >/dev/null ||
        { log "importing $archive into containerd failed"; exit 1; }
    done
  ) &
  node_importing=$!
}

# start_kubelet KUBELET KUBECONFIG CA_CERT: starts the kubelet, which registers the real
# node with the API server (wait_real_node waits until it is Ready).
start_kubelet() {
  local kubelet_bin=$1 kubeconfig=$2 ca_cert=$3
  local subnet=$node_subnet kubelet_port healthz_port controller
  read -r kubelet_port healthz_port < <(free_ports 2)
  for controller in /sys/fs/cgroup/*/; do
    if [ -e "${controller}cgroup.procs" ]; then mkdir -p "$controller${node_cgroup#/}"; fi
  done
  cat >"$node_dir/kubelet.yaml" <<YAML
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupRoot: $node_cgroup
containerRuntimeEndpoint: unix://$node_socket
address: 127.0.0.1
port: $kubelet_port
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $healthz_port
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: "$ca_cert"}
authorization: {mode: Webhook}
failSwapOn: false
enforceNodeAllocatable: []
evictionHard: {memory.available: "1Mi", nodefs.available: "1%", imagefs.available: "1%", nodefs.inodesFree: "1%"}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
resolvConf: /etc/resolv.conf
podLogsDir: $node_dir/pod-logs
podCIDR: $subnet.0/24
registerWithTaints:
- {key: "$real_node_taint", value: "true", effect: NoSchedule}
YAML
  start kubelet "$run_dir/kubelet.log" "$kubelet_bin" --config "$node_dir/kubelet.yaml" \
    --kubeconfig "$kubeconfig" --hostname-override "$real_node_name" --node-ip 127.0.0.1 \
    --root-dir "$node_dir/kubelet" --cert-dir "$node_dir/kubelet/pki"
}

# wait_real_node: waits until the images are in containerd and the real node is Ready.
wait_real_node() {
  wait "$node_importing" || die "importing the node's images into containerd failed"
  wait_until kubelet 120 real_node_ready
}

# Whether the real node reports Ready.
real_node_ready() {
  kube_get "/api/v1/nodes/$real_node_name" | node -e '
    let d = ""; process.stdin.on("data", c => d += c).on("end", () => {
      const ready = (JSON.parse(d).status.conditions || [])
        .some(c => c.type === "Ready" && c.status === "True");
      process.exit(ready ? 0 : 1);
    });'
}

# Stops the kubelet, every container it started and containerd, and removes what they
# leave on the machine: network namespaces, CNI results, mounts under the run directory,
# the pods' log links and cgroups, the iptables rules (the run's and the kubelet's), the
# bridge; restores the kernel settings. Does nothing when no real node was prepared; safe
# after a start that failed half-way.
stop_real_node() {
  [ -n "${node_dir:-}" ] || return 0
  stop_supervised kubelet
  local id netns mount cgroup rule setting
  if [ -n "${node_socket:-}" ]; then
    local ctr=(ctr --address "$node_socket" -n k8s.io)
    # containerd may be gone (it failed, or was killed): without a connect timeout, ctr
    # would wait 10 s for it.
    if "${ctr[@]}" --connect-timeout 3s version >/dev/null 2>&1; then
      for id in $("${ctr[@]}" tasks ls -q 2>/dev/null); do
        "${ctr[@]}" tasks kill -s SIGKILL "$id" >/dev/null 2>&1 || true
      done
      for id in $("${ctr[@]}" containers ls -q 2>/dev/null); do
        netns=$("${ctr[@]}" containers info "$id" 2>/dev/null | node -e '
          let d = ""; process.stdin.on("data", c => d += c).on("end", () => {
            const ns = ((JSON.parse(d).Spec || {}).linux || {}).namespaces || [];
            const net = ns.find(n => n.type === "network" && n.path);
            if (net) console.log(net.path);
          });' 2>/dev/null || true)
        "${ctr[@]}" tasks delete -f "$id" >/dev/null 2>&1 || true
        "${ctr[@]}" containers delete "$id" >/dev/null 2>&1 || true
        if [ -n "$netns" ] && [ -e "$netns" ]; then
          umount "$netns" 2>/dev/null || true
          rm -f "$netns"
        fi
        rm -f /var/lib/cni/results/*-"$id"-* 2>/dev/null || true
      done
    fi
    stop_supervised containerd
  fi
  # Whatever still runs in the pods' cgroups (containerd gone before its containers).
  for cgroup in /sys/fs/cgroup/*/"${node_cgroup#/}"; do
    [ -d "$cgroup" ] || continue
    find "$cgroup" -name cgroup.procs -exec cat {} + 2>/dev/null | xargs -r kill -KILL 2>/dev/null || true
  done
  for mount in $(awk -v dir="$node_dir/" 'index($2, dir) == 1 { print $2 }' /proc/mounts | sort -r); do
    umount "$mount" 2>/dev/null || umount -l "$mount" 2>/dev/null || true
  done
  find /var/log/containers -maxdepth 1 -lname "$node_dir/*" -delete 2>/dev/null || true
  for cgroup in /sys/fs/cgroup/*/"${node_cgroup#/}"; do
    if [ -d "$cgroup" ]; then find "$cgroup" -depth -type d -exec rmdir {} + 2>/dev/null || true; fi
  done
  for rule in "${node_rules[@]}"; do
    # shellcheck disable=SC2086 # each rule is stored as its words
    set -- $rule
    iptables -w -t "$1" -D "${@:2}" 2>/dev/null || true
  done
  node_rules=()
  remove_kubelet_chains
  if [ -n "${node_bridge:-}" ]; then ip link delete "$node_bridge" 2>/dev/null || true; fi
  for setting in "${node_saved_sysctls[@]}"; do
    sysctl -qw "$setting" 2>/dev/null || true
  done
  node_saved_sysctls=()
  node_dir=
}

# The chains every kubelet keeps in iptables (KUBE-FIREWALL and its jumps, the canaries),
# unless another run's kubelet still runs: it would only put them back.
remove_kubelet_chains() {
  pgrep -x kubelet >/dev/null && return 0
  local table chain
  iptables -w -D INPUT -j KUBE-FIREWALL 2>/dev/null || true
  iptables -w -D OUTPUT -j KUBE-FIREWALL 2>/dev/null || true
  for table in filter nat mangle; do
    for chain in KUBE-FIREWALL KUBE-KUBELET-CANARY KUBE-IPTABLES-HINT; do
      iptables -w -t "$table" -F "$chain" 2>/dev/null || true
      iptables -w -t "$table" -X "$chain" 2>/dev/null || true
    done
  done
}
