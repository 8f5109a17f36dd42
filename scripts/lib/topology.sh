# The two-node test topology of ARCHITECTURE.md in network namespaces, for the demo.
# Source it, set ID (a short unique prefix), call topology_up; topology_down removes
# everything (call it from a trap).
#   node1: runs kxdp on n1u (uplink) and the host sides of its pod veths
#   node2: plain Linux, a kernel vxlan device set up as flannel sets up flannel.1
#   underlay: a bridge joining the uplinks and an external client
# Addresses: pods 198.18.0.0/16, node CIDRs 198.18.1.0/24 and 198.18.2.0/24,
# underlay 198.19.128.0/24, Services 198.19.0.0/17.

NODE1_VTEP_MAC=02:00:c6:13:80:01
NODE2_VTEP_MAC=02:00:c6:13:80:02

topology_namespaces() {
  # p12's namespace is made empty: the demo creates the pod while kxdp runs.
  echo "${ID}-n1 ${ID}-n2 ${ID}-ul ${ID}-cl ${ID}-p10 ${ID}-p11 ${ID}-p12 ${ID}-p20"
}

topology_down() {
  for ns in $(topology_namespaces); do
    ip netns pids "$ns" 2>/dev/null | xargs -r kill 2>/dev/null || true
    ip netns del "$ns" 2>/dev/null || true
  done
}

# pod NS NODE_NS HOST_IF IP
topology_pod() {
  ip link add "$3" netns "$2" type veth peer name eth0 netns "$1"
  ip -n "$1" addr add "$4/32" dev eth0
  ip -n "$1" link set eth0 up
  ip -n "$1" route add 169.254.1.1 dev eth0 scope link
  ip -n "$1" route add default via 169.254.1.1
  ip -n "$2" link set "$3" up
  ip -n "$2" route add "$4/32" dev "$3"
}

topology_up() {
  local n1=${ID}-n1 n2=${ID}-n2 ul=${ID}-ul cl=${ID}-cl
  for ns in $(topology_namespaces); do
    ip netns add "$ns"
    ip -n "$ns" link set lo up
  done
  ip -n "$ul" link add br0 type bridge
  ip -n "$ul" link set br0 up
  ip link add n1u netns "$n1" type veth peer name u1 netns "$ul"
  ip link add n2u netns "$n2" type veth peer name u2 netns "$ul"
  ip link add clu netns "$cl" type veth peer name u3 netns "$ul"
  for u in u1 u2 u3; do ip -n "$ul" link set "$u" master br0 up; done
  ip -n "$n1" addr add 198.19.128.1/24 dev n1u; ip -n "$n1" link set n1u up
  ip -n "$n2" addr add 198.19.128.2/24 dev n2u; ip -n "$n2" link set n2u up
  ip -n "$cl" addr add 198.19.128.100/24 dev clu; ip -n "$cl" link set clu up
  ip -n "$n1" addr add 169.254.1.1/32 dev lo
  ip -n "$n2" addr add 169.254.1.1/32 dev lo
  ip netns exec "$n2" sysctl -qw net.ipv4.ip_forward=1
  topology_pod "${ID}-p10" "$n1" n1p10 198.18.1.10
  topology_pod "${ID}-p11" "$n1" n1p11 198.18.1.11
  topology_pod "${ID}-p20" "$n2" n2p10 198.18.2.10
  ip -n "$n2" link add flannel.1 type vxlan id 1 local 198.19.128.2 dev n2u dstport 8472 nolearning
  ip -n "$n2" link set flannel.1 address "$NODE2_VTEP_MAC" mtu 1450 up
  ip -n "$n2" addr add 198.18.2.0/32 dev flannel.1
  ip -n "$n2" route add 198.18.1.0/24 via 198.18.1.0 dev flannel.1 onlink
  ip -n "$n2" neigh add 198.18.1.0 lladdr "$NODE1_VTEP_MAC" dev flannel.1
  bridge -n "$n2" fdb append "$NODE1_VTEP_MAC" dev flannel.1 dst 198.19.128.1
}
