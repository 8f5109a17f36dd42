//! Connection tracking for Service NAT: a fixed-capacity flow table.
//!
//! ## One flow, two tuples
//! As in Linux's `struct nf_conn`, whose `tuplehash[IP_CT_DIR_MAX]` hangs one
//! connection in the hash under both of its directions, a [`Flow`] holds the tuple its
//! first packet carried (`orig`: client -> Service address) and the tuple its replies
//! will carry (`reply`: backend -> client, or backend -> SNAT address). Both are
//! indexed, so a packet from either side finds the flow in one lookup and learns which
//! way it travels ([`Dir`]). The NAT is what differs between the two tuples; the table
//! does not interpret it.
//!
//! ## Layout
//! - A slab of `capacity` flows, reserved at construction, and a free list of slab
//!   indices. A [`FlowId`] is a slab index.
//! - An index: open addressing with linear probing over a power-of-two array of at
//!   least 4 x capacity `u64` slots, so with two tuples per flow the load stays at or
//!   under 0.5. A slot is `tag << 32 | (flow << 1 | dir) + 1`; 0 is empty. Lookup
//!   compares the 32-bit tag first, then the full tuple in the slab. The home slot is
//!   the tag's low bits, so deletion shifts the following entries back (Knuth, TAOCP
//!   vol. 3, 6.4, Algorithm R) without reading the slab: no tombstones, and probe
//!   lengths do not decay with churn.
//! - The index hashes [`FiveTuple::hash`] once more with a per-table random seed.
//!   `FiveTuple::hash` is seedless on purpose (Maglev picks and VXLAN source ports must
//!   agree across nodes), which also makes it public: anyone could pick source
//!   addresses whose tuples share a home slot and, with spoofed SYNs, grow one probe
//!   chain until every lookup walks it. Linux keys its conntrack hash with
//!   `nf_conntrack_hash_rnd` for the same reason. Nothing observable depends on the
//!   seed: eviction and expiry walk the slab, not the index.
//!
//! Nothing on the lookup, insert or observe path allocates, locks or makes a syscall.
//!
//! ## Prefetching a batch
//! With many flows a lookup misses the cache twice in a row: on the index slot, then
//! on the slab entry the slot names. [`FlowTable::prefetch`] hashes a key, starts
//! loading its home slot and returns a [`Probe`]; [`FlowTable::prefetch_flow`],
//! called a few packets later when that slot has arrived, reads it and starts loading
//! the flow it names; [`FlowTable::lookup_probed`] then looks the key up with the
//! probe's hash instead of computing it again. A caller that runs the two stages for
//! packets i+2d and i+d while it looks up packet i has both misses in flight behind
//! other work: software-pipelined prefetching as Chen et al. apply it to hash-table
//! probes ("Improving Hash Join Performance through Prefetching", ICDE 2004). The
//! prefetches are hints: they change nothing, and if the index moved on in between
//! (an insert or removal) they only waste a load. The probe itself cannot go stale:
//! its hash depends only on the key and the table's seed.
//!
//! ## States and timeouts
//! The caller hands in the time ([`Nanos`]); the table never reads a clock. Each
//! observed packet moves the flow's [`FlowState`] and sets its expiry to now plus the
//! state's timeout ([`Timeouts`]). TCP follows Linux's `nf_conntrack_proto_tcp` in
//! loose mode, reduced to what NAT needs: a SYN starts `TcpSynSent`, any other first
//! packet is a mid-stream pickup in `TcpEstablished`; a reply establishes; a FIN
//! waits; FINs both ways or any RST close; a new SYN from the client on a closed flow
//! reopens it (Linux's TIME_WAIT/CLOSE -> SYN_SENT), so a reused source port does not
//! ride a 10-second timeout. A flow is *assured* once it has seen a packet in the
//! reply direction (Linux's `IPS_SEEN_REPLY`/`IPS_ASSURED`). Until then a TCP flow
//! never gets more than the SYN timeout, whatever its state, so a flood of ACKs from
//! spoofed sources creates short-lived, evictable flows rather than day-long ones.
//! Expired flows are absent: a lookup that finds one removes it, and
//! [`FlowTable::expire`] sweeps the slab incrementally from a cursor, as Linux's
//! conntrack garbage collector walks its buckets a slice at a time.
//!
//! ## When the table is full
//! The table never grows. Like Linux's `early_drop`, which looks at up to
//! `NF_CT_EVICTION_RANGE` (8) entries for one that is not assured, an insert into a
//! full table examines up to [`EVICTION_RANGE`] flows from a rotating cursor over the
//! slab: it reuses the first expired one, else evicts the non-assured one that expires
//! first (counted in [`FlowTable::evictions`]); when all of them are assured the
//! insert fails with [`InsertError::Full`] (counted in [`FlowTable::insert_full`]).
//! Established connections are never sacrificed for new ones, and an attacker's
//! half-open flows are what goes first.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;

use crate::flow::{mix64, FiveTuple, Nanos, Proto};

/// Largest capacity: the index (4 x capacity slots) must be addressable by the 32-bit
/// tag.
pub const MAX_CAPACITY: usize = 1 << 30;

/// Flows an insert into a full table examines for one to evict (Linux's
/// `NF_CT_EVICTION_RANGE`).
pub const EVICTION_RANGE: usize = 8;

/// A flow's place in the table. Valid until the flow is removed, evicted or expired:
/// hold it for the processing of one packet, not across inserts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FlowId(u32);

/// Which of a flow's tuples a packet matched.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Dir {
    /// As the flow's first packet: client -> Service.
    Original,
    /// The other way: backend -> client.
    Reply,
}

/// The TCP flags conntrack looks at.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcpFlags {
    pub syn: bool,
    pub ack: bool,
    pub fin: bool,
    pub rst: bool,
}

impl TcpFlags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const ACK: u8 = 0x10;

    /// Decodes the flags byte of a TCP header (byte 13).
    pub fn from_byte(b: u8) -> TcpFlags {
        TcpFlags {
            syn: b & Self::SYN != 0,
            ack: b & Self::ACK != 0,
            fin: b & Self::FIN != 0,
            rst: b & Self::RST != 0,
        }
    }

    /// A connection request: SYN without ACK.
    fn is_syn_only(self) -> bool {
        self.syn && !self.ack && !self.rst
    }
}

/// Why an insert did not happen.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InsertError {
    #[error("the flow table is full and every flow examined for eviction is assured")]
    Full,
    #[error("a live flow already tracks one of these tuples")]
    Exists,
}

/// How long a flow lives after its last packet, per state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// SYN seen, no reply yet; also the cap for any TCP flow without a reply.
    pub tcp_syn: Nanos,
    pub tcp_established: Nanos,
    /// One side has sent a FIN.
    pub tcp_fin: Nanos,
    /// RST seen, or FINs from both sides.
    pub tcp_close: Nanos,
    pub udp_unreplied: Nanos,
    pub udp_replied: Nanos,
}

impl Default for Timeouts {
    /// Established is what kube-proxy sets `nf_conntrack_tcp_timeout_established` to;
    /// the UDP timeouts are Linux's `nf_conntrack_udp_timeout{,_stream}`.
    fn default() -> Timeouts {
        Timeouts {
            tcp_syn: Nanos::from_secs(60),
            tcp_established: Nanos::from_secs(86_400),
            tcp_fin: Nanos::from_secs(120),
            tcp_close: Nanos::from_secs(10),
            udp_unreplied: Nanos::from_secs(30),
            udp_replied: Nanos::from_secs(120),
        }
    }
}

impl Timeouts {
    /// The timeout of a flow in `state`.
    pub fn of(&self, state: FlowState) -> Nanos {
        match state {
            FlowState::TcpSynSent => self.tcp_syn,
            FlowState::TcpEstablished => self.tcp_established,
            FlowState::TcpFinWait => self.tcp_fin,
            FlowState::TcpClosed => self.tcp_close,
            FlowState::UdpUnreplied => self.udp_unreplied,
            FlowState::UdpReplied => self.udp_replied,
        }
    }
}

/// Where a flow is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FlowState {
    TcpSynSent,
    TcpEstablished,
    TcpFinWait,
    TcpClosed,
    UdpUnreplied,
    UdpReplied,
}

impl FlowState {
    /// Upper-case name in the style of `conntrack -L`, for inspection commands.
    pub fn name(self) -> &'static str {
        match self {
            FlowState::TcpSynSent => "SYN_SENT",
            FlowState::TcpEstablished => "ESTABLISHED",
            FlowState::TcpFinWait => "FIN_WAIT",
            FlowState::TcpClosed => "CLOSE",
            FlowState::UdpUnreplied => "UNREPLIED",
            FlowState::UdpReplied => "REPLIED",
        }
    }
}

// `Flow::bits`.
const LIVE: u8 = 1 << 0;
const SEEN_REPLY: u8 = 1 << 1;
const FIN_ORIGINAL: u8 = 1 << 2;
const FIN_REPLY: u8 = 1 << 3;

/// One tracked connection. The tuples are read-only: they are the flow's keys in the
/// index.
#[derive(Clone, Copy, Debug)]
pub struct Flow<T> {
    orig: FiveTuple,
    reply: FiveTuple,
    expires: Nanos,
    state: FlowState,
    bits: u8,
    /// The pipeline's bookkeeping for this flow.
    pub data: T,
}

const _: () = assert!(std::mem::size_of::<Flow<()>>() <= 40);
const _: () = assert!(std::mem::size_of::<Flow<[u64; 2]>>() <= 56);

impl<T> Flow<T> {
    /// The tuple of the first packet (client -> Service).
    pub fn orig(&self) -> &FiveTuple {
        &self.orig
    }
    /// The tuple replies carry (backend -> client or SNAT address).
    pub fn reply(&self) -> &FiveTuple {
        &self.reply
    }
    /// The tuple packets travelling in `dir` carry.
    pub fn tuple(&self, dir: Dir) -> &FiveTuple {
        match dir {
            Dir::Original => &self.orig,
            Dir::Reply => &self.reply,
        }
    }
    pub fn state(&self) -> FlowState {
        self.state
    }
    /// The flow is gone at and after this instant unless a packet refreshes it.
    pub fn expires(&self) -> Nanos {
        self.expires
    }
    pub fn is_expired(&self, now: Nanos) -> bool {
        now >= self.expires
    }
    /// Has seen a packet in the reply direction: never evicted to make room.
    pub fn is_assured(&self) -> bool {
        self.bits & SEEN_REPLY != 0
    }

    fn is_live(&self) -> bool {
        self.bits & LIVE != 0
    }

    /// Moves the state machine for one packet and refreshes the expiry.
    fn advance(&mut self, dir: Dir, tcp: Option<TcpFlags>, timeouts: &Timeouts, now: Nanos) {
        if dir == Dir::Reply {
            self.bits |= SEEN_REPLY;
        }
        self.state = match self.orig.proto {
            Proto::Udp if self.is_assured() => FlowState::UdpReplied,
            Proto::Udp => FlowState::UdpUnreplied,
            Proto::Tcp => self.tcp_next(dir, tcp.unwrap_or_default()),
        };
        let mut timeout = timeouts.of(self.state);
        if self.orig.proto == Proto::Tcp && !self.is_assured() {
            timeout = timeout.min(timeouts.tcp_syn);
        }
        self.expires = now.saturating_add(timeout);
    }

    fn tcp_next(&mut self, dir: Dir, f: TcpFlags) -> FlowState {
        let state = self.state;
        if f.rst {
            return FlowState::TcpClosed;
        }
        if state == FlowState::TcpClosed {
            if dir == Dir::Original && f.is_syn_only() {
                // A new connection on a reused source port: start over, unassured.
                self.bits = LIVE;
                return FlowState::TcpSynSent;
            }
            return FlowState::TcpClosed;
        }
        if f.fin {
            self.bits |= match dir {
                Dir::Original => FIN_ORIGINAL,
                Dir::Reply => FIN_REPLY,
            };
        }
        if self.bits & (FIN_ORIGINAL | FIN_REPLY) == FIN_ORIGINAL | FIN_REPLY {
            FlowState::TcpClosed
        } else if self.bits & (FIN_ORIGINAL | FIN_REPLY) != 0 {
            FlowState::TcpFinWait
        } else if state == FlowState::TcpSynSent && dir == Dir::Reply {
            FlowState::TcpEstablished
        } else {
            state
        }
    }
}

const EMPTY: u64 = 0;

/// Index slots [`FlowTable::prefetch_flow`] looks at from a key's home: past the
/// first few (at a load of at most 0.5 a chain is rarely longer) it would wait on a
/// line it has not prefetched.
const PROBE_SLOTS: usize = 4;

/// A key with its index tag computed, from [`FlowTable::prefetch`]: for
/// [`FlowTable::prefetch_flow`] and then [`FlowTable::lookup_probed`], which need not
/// hash the key again. Only meaningful to the table that made it (the tag depends on
/// the table's seed); valid for as long as that table lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Probe {
    key: FiveTuple,
    tag: u32,
}

impl Probe {
    /// The key this probe was made for.
    pub fn key(&self) -> &FiveTuple {
        &self.key
    }
}

/// The fixed-capacity flow table. See the module documentation.
pub struct FlowTable<T: Copy> {
    /// Reserved to `capacity` at construction and never reallocated: slots past
    /// `slab.len()` have never been used (there is no `T` to fill them with).
    slab: Vec<Flow<T>>,
    /// Slab indices of removed flows; reserved to `capacity`.
    free: Vec<u32>,
    index: Box<[u64]>,
    mask: usize,
    seed: u64,
    capacity: usize,
    len: usize,
    timeouts: Timeouts,
    evict_cursor: usize,
    sweep_cursor: usize,
    evictions: u64,
    insert_full: u64,
}

impl<T: Copy> FlowTable<T> {
    /// A table for `capacity` flows, all memory reserved now, keyed with a random seed.
    ///
    /// # Panics
    /// If `capacity` is 0 or over [`MAX_CAPACITY`].
    pub fn new(capacity: usize, timeouts: Timeouts) -> Self {
        Self::with_seed(
            capacity,
            timeouts,
            RandomState::new().hash_one(0x6b78_6470_u64),
        )
    }

    /// As [`FlowTable::new`] with a chosen hash seed (for reproducible benchmarks;
    /// behaviour does not depend on it).
    pub fn with_seed(capacity: usize, timeouts: Timeouts, seed: u64) -> Self {
        assert!(
            (1..=MAX_CAPACITY).contains(&capacity),
            "flow table capacity {capacity} is not in 1..={MAX_CAPACITY}"
        );
        let slots = (capacity * 4).next_power_of_two();
        FlowTable {
            slab: Vec::with_capacity(capacity),
            free: Vec::with_capacity(capacity),
            index: vec![EMPTY; slots].into_boxed_slice(),
            mask: slots - 1,
            seed,
            capacity,
            len: 0,
            timeouts,
            evict_cursor: 0,
            sweep_cursor: 0,
            evictions: 0,
            insert_full: 0,
        }
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }
    /// Flows held, including expired ones not yet removed.
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    pub fn timeouts(&self) -> &Timeouts {
        &self.timeouts
    }
    /// Live flows evicted to make room for new ones.
    pub fn evictions(&self) -> u64 {
        self.evictions
    }
    /// Inserts refused with [`InsertError::Full`].
    pub fn insert_full(&self) -> u64 {
        self.insert_full
    }

    /// The flow `key` belongs to, and the direction it travels. An expired flow is
    /// removed and not returned.
    #[inline]
    pub fn lookup(&mut self, key: &FiveTuple, now: Nanos) -> Option<(FlowId, Dir)> {
        self.lookup_tagged(key, self.tag(key), now)
    }

    /// [`FlowTable::lookup`] of the probe's key, without hashing it again. The probe
    /// must come from this table's [`FlowTable::prefetch`].
    #[inline]
    pub fn lookup_probed(&mut self, probe: &Probe, now: Nanos) -> Option<(FlowId, Dir)> {
        debug_assert_eq!(probe.tag, self.tag(&probe.key), "a probe of another table");
        self.lookup_tagged(&probe.key, probe.tag, now)
    }

    #[inline]
    fn lookup_tagged(&mut self, key: &FiveTuple, tag: u32, now: Nanos) -> Option<(FlowId, Dir)> {
        let (i, dir) = self.find_tagged(key, tag)?;
        if self.slab[i].is_expired(now) {
            self.remove_at(i);
            return None;
        }
        Some((FlowId(i as u32), dir))
    }

    /// Does a live flow use this tuple in either direction?
    pub fn contains(&self, key: &FiveTuple, now: Nanos) -> bool {
        self.find(key)
            .is_some_and(|(i, _)| !self.slab[i].is_expired(now))
    }

    pub fn get(&self, id: FlowId) -> &Flow<T> {
        &self.slab[id.0 as usize]
    }

    /// For the flow's `data`; its tuples cannot change.
    pub fn get_mut(&mut self, id: FlowId) -> &mut Flow<T> {
        &mut self.slab[id.0 as usize]
    }

    /// Starts loading the index slot a lookup of `key` reads first (its home slot),
    /// for a lookup a few packets later. A flow is indexed under both of its tuples,
    /// so whichever one a packet carries, this is the slot [`FlowTable::lookup`]
    /// will touch. Changes nothing; on targets other than x86_64 it only computes
    /// the probe.
    // Always inlined: when a call returned the probe through memory, reading it back
    // stalled on store forwarding (perf, in `Pipeline::process`'s loop).
    #[inline(always)]
    pub fn prefetch(&self, key: &FiveTuple) -> Probe {
        let tag = self.tag(key);
        prefetch_line(&self.index[tag as usize & self.mask]);
        Probe { key: *key, tag }
    }

    /// The second stage of [`FlowTable::prefetch`]: once the probed slot has had time
    /// to arrive, reads it (and its next few) and starts loading the flow whose tag
    /// matches, the slab entry a lookup compares the key with and then updates.
    /// Changes nothing; a probe the index has moved on from only wastes a load.
    #[inline]
    pub fn prefetch_flow(&self, probe: &Probe) {
        let mut pos = probe.tag as usize & self.mask;
        for _ in 0..PROBE_SLOTS {
            let slot = self.index[pos];
            if slot == EMPTY {
                return;
            }
            if (slot >> 32) as u32 == probe.tag {
                let (i, _) = decode(slot);
                if let Some(flow) = self.slab.get(i) {
                    // A flow is 56 bytes: it usually straddles two cache lines.
                    let first: *const Flow<T> = flow;
                    prefetch_line(first);
                    prefetch_line(first.cast::<u8>().wrapping_add(size_of::<Flow<T>>() - 1));
                }
                return;
            }
            pos = (pos + 1) & self.mask;
        }
    }

    /// Tracks a new flow whose first packet carried `orig` and whose replies will carry
    /// `reply`. `tcp` is `Some(flags of that packet)` for TCP, `None` for UDP.
    pub fn insert(
        &mut self,
        orig: FiveTuple,
        reply: FiveTuple,
        tcp: Option<TcpFlags>,
        data: T,
        now: Nanos,
    ) -> Result<FlowId, InsertError> {
        // Through lookup, so expired holders of either tuple are cleared out first.
        if self.lookup(&orig, now).is_some() || self.lookup(&reply, now).is_some() {
            return Err(InsertError::Exists);
        }
        if self.free.is_empty() && self.slab.len() == self.capacity {
            self.make_room(now)?;
        }
        let state = match (orig.proto, tcp) {
            (Proto::Udp, _) => FlowState::UdpUnreplied,
            (Proto::Tcp, Some(f)) if f.is_syn_only() => FlowState::TcpSynSent,
            // Mid-stream pickup (Linux's loose mode): a connection we did not see open.
            (Proto::Tcp, _) => FlowState::TcpEstablished,
        };
        let mut flow = Flow {
            orig,
            reply,
            expires: now,
            state,
            bits: LIVE,
            data,
        };
        flow.advance(Dir::Original, tcp, &self.timeouts, now);
        let i = match self.free.pop() {
            Some(i) => {
                self.slab[i as usize] = flow;
                i as usize
            }
            None => {
                // Within the capacity reserved in `with_seed`: no reallocation.
                self.slab.push(flow);
                self.slab.len() - 1
            }
        };
        self.index_insert(&orig, i, Dir::Original);
        self.index_insert(&reply, i, Dir::Reply);
        self.len += 1;
        Ok(FlowId(i as u32))
    }

    /// Accounts one packet of the flow travelling in `dir`: moves its state and
    /// refreshes its expiry.
    #[inline]
    pub fn observe(&mut self, id: FlowId, dir: Dir, tcp: Option<TcpFlags>, now: Nanos) {
        let flow = &mut self.slab[id.0 as usize];
        debug_assert!(flow.is_live(), "observe on a removed flow {id:?}");
        if flow.is_live() {
            flow.advance(dir, tcp, &self.timeouts, now);
        }
    }

    /// Forgets the flow. Removing an already removed flow does nothing.
    pub fn remove(&mut self, id: FlowId) {
        let i = id.0 as usize;
        if self.slab.get(i).is_some_and(Flow::is_live) {
            self.remove_at(i);
        }
    }

    /// Sweeps the slab from where the last sweep stopped: removes up to `budget`
    /// expired flows, examining at most 4 x `budget` slab entries. Returns how many it
    /// removed.
    pub fn expire(&mut self, now: Nanos, budget: usize) -> usize {
        let n = self.slab.len();
        let mut removed = 0;
        for _ in 0..budget.saturating_mul(4).min(n) {
            let i = self.sweep_cursor;
            self.sweep_cursor = if i + 1 == n { 0 } else { i + 1 };
            let flow = &self.slab[i];
            if flow.is_live() && flow.is_expired(now) {
                self.remove_at(i);
                removed += 1;
                if removed == budget {
                    break;
                }
            }
        }
        removed
    }

    /// The flows held, expired ones not yet swept included (see [`Flow::is_expired`]).
    pub fn iter(&self) -> impl Iterator<Item = &Flow<T>> {
        self.slab.iter().filter(|f| f.is_live())
    }

    /// Frees one slab entry of a full table, or says why not.
    fn make_room(&mut self, now: Nanos) -> Result<(), InsertError> {
        // Full: every slab entry is live.
        let n = self.slab.len();
        let mut victim: Option<usize> = None;
        let mut i = self.evict_cursor;
        for _ in 0..EVICTION_RANGE.min(n) {
            let flow = &self.slab[i];
            if flow.is_expired(now) {
                self.evict_cursor = if i + 1 == n { 0 } else { i + 1 };
                self.remove_at(i);
                return Ok(());
            }
            if !flow.is_assured() && victim.is_none_or(|v| flow.expires < self.slab[v].expires) {
                victim = Some(i);
            }
            i = if i + 1 == n { 0 } else { i + 1 };
        }
        self.evict_cursor = i;
        match victim {
            Some(v) => {
                self.remove_at(v);
                self.evictions += 1;
                Ok(())
            }
            None => {
                self.insert_full += 1;
                Err(InsertError::Full)
            }
        }
    }

    fn remove_at(&mut self, i: usize) {
        let (orig, reply) = (self.slab[i].orig, self.slab[i].reply);
        self.index_remove(&orig, i, Dir::Original);
        self.index_remove(&reply, i, Dir::Reply);
        self.slab[i].bits = 0;
        // Never over the reserved capacity: each index is free at most once.
        self.free.push(i as u32);
        self.len -= 1;
    }

    /// The tag of `key`; its low bits are the home slot.
    #[inline]
    fn tag(&self, key: &FiveTuple) -> u32 {
        (mix64(key.hash() ^ self.seed) >> 32) as u32
    }

    #[inline]
    fn find(&self, key: &FiveTuple) -> Option<(usize, Dir)> {
        self.find_tagged(key, self.tag(key))
    }

    #[inline]
    fn find_tagged(&self, key: &FiveTuple, tag: u32) -> Option<(usize, Dir)> {
        let mut pos = tag as usize & self.mask;
        loop {
            let slot = self.index[pos];
            if slot == EMPTY {
                return None;
            }
            if (slot >> 32) as u32 == tag {
                let (i, dir) = decode(slot);
                if self.slab[i].tuple(dir) == key {
                    return Some((i, dir));
                }
            }
            pos = (pos + 1) & self.mask;
        }
    }

    fn index_insert(&mut self, key: &FiveTuple, i: usize, dir: Dir) {
        let tag = self.tag(key);
        let mut pos = tag as usize & self.mask;
        // The load is at most 0.5: an empty slot is always near.
        while self.index[pos] != EMPTY {
            pos = (pos + 1) & self.mask;
        }
        self.index[pos] = encode(tag, i, dir);
    }

    /// Removes the slot of flow `i` in `dir` and shifts the rest of its cluster back
    /// so that every entry stays reachable from its home without crossing a gap.
    fn index_remove(&mut self, key: &FiveTuple, i: usize, dir: Dir) {
        let tag = self.tag(key);
        let want = encode(tag, i, dir);
        let mut hole = tag as usize & self.mask;
        while self.index[hole] != want {
            debug_assert!(self.index[hole] != EMPTY, "flow {i} is not indexed");
            hole = (hole + 1) & self.mask;
        }
        let mut pos = hole;
        loop {
            pos = (pos + 1) & self.mask;
            let slot = self.index[pos];
            if slot == EMPTY {
                break;
            }
            let home = (slot >> 32) as usize & self.mask;
            // The entry may move into the hole if the hole lies on its probe path,
            // i.e. between its home and where it sits (cyclically).
            if pos.wrapping_sub(home) & self.mask >= pos.wrapping_sub(hole) & self.mask {
                self.index[hole] = slot;
                hole = pos;
            }
        }
        self.index[hole] = EMPTY;
    }
}

/// Asks the CPU to start loading the cache line holding `p` into all cache levels.
#[inline(always)]
fn prefetch_line<P>(p: *const P) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: PREFETCHT0 is a hint: it neither reads into a register nor faults, for
    // any address, and SSE (which has it) is part of the x86_64 baseline.
    unsafe {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        _mm_prefetch::<_MM_HINT_T0>(p.cast::<i8>());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

#[inline]
fn encode(tag: u32, i: usize, dir: Dir) -> u64 {
    let low = ((i as u64) << 1 | (dir == Dir::Reply) as u64) + 1;
    (tag as u64) << 32 | low
}

#[inline]
fn decode(slot: u64) -> (usize, Dir) {
    let low = (slot as u32 - 1) as usize;
    let dir = if low & 1 == 1 {
        Dir::Reply
    } else {
        Dir::Original
    };
    (low >> 1, dir)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::net::Ipv4Addr;

    use proptest::prelude::*;

    use super::*;

    const SYN: Option<TcpFlags> = Some(TcpFlags {
        syn: true,
        ack: false,
        fin: false,
        rst: false,
    });
    const SYN_ACK: Option<TcpFlags> = Some(TcpFlags {
        syn: true,
        ack: true,
        fin: false,
        rst: false,
    });
    const ACK: Option<TcpFlags> = Some(TcpFlags {
        syn: false,
        ack: true,
        fin: false,
        rst: false,
    });
    const FIN_ACK: Option<TcpFlags> = Some(TcpFlags {
        syn: false,
        ack: true,
        fin: true,
        rst: false,
    });
    const RST: Option<TcpFlags> = Some(TcpFlags {
        syn: false,
        ack: false,
        fin: false,
        rst: true,
    });

    fn s(secs: u64) -> Nanos {
        Nanos::from_secs(secs)
    }

    fn tuple(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16, proto: Proto) -> FiveTuple {
        FiveTuple {
            src: Ipv4Addr::from(src),
            dst: Ipv4Addr::from(dst),
            sport,
            dport,
            proto,
        }
    }

    /// Client 10.0.0.1:`port` to ClusterIP 10.96.0.10:80, DNATed to 10.244.1.5:8080.
    fn service_flow(port: u16, proto: Proto) -> (FiveTuple, FiveTuple) {
        let orig = tuple([10, 0, 0, 1], port, [10, 96, 0, 10], 80, proto);
        let reply = tuple([10, 244, 1, 5], 8080, [10, 0, 0, 1], port, proto);
        (orig, reply)
    }

    fn table(capacity: usize) -> FlowTable<u32> {
        FlowTable::new(capacity, Timeouts::default())
    }

    impl<T: Copy> FlowTable<T> {
        /// Checks the index against the slab: every slot reachable from its home
        /// without a gap, pointing at a live flow with that tuple; every live flow
        /// indexed under both tuples; counts agree.
        fn check(&self) {
            let mut occupied = 0;
            for (pos, &slot) in self.index.iter().enumerate() {
                if slot == EMPTY {
                    continue;
                }
                occupied += 1;
                let (i, dir) = decode(slot);
                let flow = &self.slab[i];
                assert!(flow.is_live(), "slot {pos} points at free flow {i}");
                let tag = self.tag(flow.tuple(dir));
                assert_eq!((slot >> 32) as u32, tag, "slot {pos} has a wrong tag");
                let mut p = tag as usize & self.mask;
                while p != pos {
                    assert_ne!(self.index[p], EMPTY, "slot {pos} is cut off from home");
                    p = (p + 1) & self.mask;
                }
            }
            let live = self.slab.iter().filter(|f| f.is_live()).count();
            assert_eq!(live, self.len);
            assert_eq!(occupied, 2 * self.len);
            assert_eq!(live + self.free.len(), self.slab.len());
            assert!(self.len <= self.capacity);
            assert_eq!(self.slab.capacity(), self.capacity, "the slab reallocated");
            for (i, flow) in self.slab.iter().enumerate() {
                if flow.is_live() {
                    assert_eq!(self.find(&flow.orig), Some((i, Dir::Original)));
                    assert_eq!(self.find(&flow.reply), Some((i, Dir::Reply)));
                }
            }
        }
    }

    #[test]
    fn reply_tuple_finds_the_same_flow() {
        let mut t = table(16);
        let (orig, reply) = service_flow(40000, Proto::Tcp);
        let id = t.insert(orig, reply, SYN, 7, s(0)).unwrap();
        assert_eq!(t.lookup(&orig, s(1)), Some((id, Dir::Original)));
        assert_eq!(t.lookup(&reply, s(1)), Some((id, Dir::Reply)));
        assert_eq!(t.get(id).data, 7);
        assert_eq!(t.get(id).orig(), &orig);
        assert_eq!(t.get(id).reply(), &reply);
        // The reversed original (ClusterIP -> client) is not the reply: NAT happened.
        assert_eq!(t.lookup(&orig.reversed(), s(1)), None);
        t.check();
    }

    #[test]
    fn either_tuple_of_a_live_flow_refuses_a_second_flow() {
        let mut t = table(16);
        let (orig, reply) = service_flow(40000, Proto::Tcp);
        t.insert(orig, reply, SYN, 0, s(0)).unwrap();
        let other_backend = tuple([10, 244, 2, 9], 8080, [10, 0, 0, 1], 40000, Proto::Tcp);
        assert_eq!(
            t.insert(orig, other_backend, SYN, 0, s(1)),
            Err(InsertError::Exists)
        );
        let other_client = tuple([10, 0, 0, 2], 1, [10, 96, 0, 10], 80, Proto::Tcp);
        assert_eq!(
            t.insert(other_client, reply, SYN, 0, s(1)),
            Err(InsertError::Exists)
        );
        assert_eq!(t.len(), 1);
        t.check();
    }

    #[test]
    fn expired_flow_is_gone_on_lookup() {
        let mut t = table(16);
        let (orig, reply) = service_flow(40000, Proto::Udp);
        t.insert(orig, reply, None, 0, s(0)).unwrap();
        assert!(t.contains(&orig, s(29)));
        assert!(!t.contains(&orig, s(30)));
        assert_eq!(t.len(), 1, "contains does not remove");
        assert_eq!(t.lookup(&reply, s(30)), None);
        assert_eq!(t.len(), 0);
        assert_eq!(t.lookup(&orig, s(30)), None);
        t.check();
    }

    #[test]
    fn expired_flow_does_not_block_a_new_one() {
        let mut t = table(16);
        let (orig, reply) = service_flow(40000, Proto::Udp);
        t.insert(orig, reply, None, 1, s(0)).unwrap();
        let id = t.insert(orig, reply, None, 2, s(31)).unwrap();
        assert_eq!(t.len(), 1);
        assert_eq!(t.get(id).data, 2);
        t.check();
    }

    #[test]
    fn syn_then_reply_establishes_and_assures() {
        let mut t = table(16);
        let (orig, reply) = service_flow(40000, Proto::Tcp);
        let id = t.insert(orig, reply, SYN, 0, s(0)).unwrap();
        assert_eq!(t.get(id).state(), FlowState::TcpSynSent);
        assert_eq!(t.get(id).expires(), s(60));
        assert!(!t.get(id).is_assured());
        t.observe(id, Dir::Reply, SYN_ACK, s(1));
        assert_eq!(t.get(id).state(), FlowState::TcpEstablished);
        assert_eq!(t.get(id).expires(), s(1 + 86_400));
        assert!(t.get(id).is_assured());
    }

    #[test]
    fn client_retransmits_keep_a_flow_syn_sent() {
        let mut t = table(16);
        let (orig, reply) = service_flow(40000, Proto::Tcp);
        let id = t.insert(orig, reply, SYN, 0, s(0)).unwrap();
        t.observe(id, Dir::Original, SYN, s(3));
        assert_eq!(t.get(id).state(), FlowState::TcpSynSent);
        assert_eq!(t.get(id).expires(), s(63));
    }

    #[test]
    fn mid_stream_pickup_is_established_but_unassured_until_a_reply() {
        let mut t = table(16);
        let (orig, reply) = service_flow(40000, Proto::Tcp);
        let id = t.insert(orig, reply, ACK, 0, s(0)).unwrap();
        assert_eq!(t.get(id).state(), FlowState::TcpEstablished);
        assert!(!t.get(id).is_assured());
        assert_eq!(t.get(id).expires(), s(60), "capped at the SYN timeout");
        t.observe(id, Dir::Reply, ACK, s(2));
        assert!(t.get(id).is_assured());
        assert_eq!(t.get(id).expires(), s(2 + 86_400));
    }

    #[test]
    fn fin_one_way_waits_the_fin_timeout() {
        let mut t = table(16);
        let (orig, reply) = service_flow(40000, Proto::Tcp);
        let id = t.insert(orig, reply, SYN, 0, s(0)).unwrap();
        t.observe(id, Dir::Reply, SYN_ACK, s(0));
        t.observe(id, Dir::Original, FIN_ACK, s(5));
        assert_eq!(t.get(id).state(), FlowState::TcpFinWait);
        assert_eq!(t.get(id).expires(), s(125));
        // Another FIN from the same side is a retransmission, not the other half.
        t.observe(id, Dir::Original, FIN_ACK, s(6));
        assert_eq!(t.get(id).state(), FlowState::TcpFinWait);
        t.observe(id, Dir::Reply, ACK, s(7));
        assert_eq!(t.get(id).state(), FlowState::TcpFinWait);
    }

    #[test]
    fn fin_both_ways_shortens_timeout_to_close() {
        let mut t = table(16);
        let (orig, reply) = service_flow(40000, Proto::Tcp);
        let id = t.insert(orig, reply, SYN, 0, s(0)).unwrap();
        t.observe(id, Dir::Reply, SYN_ACK, s(0));
        t.observe(id, Dir::Reply, FIN_ACK, s(5));
        t.observe(id, Dir::Original, FIN_ACK, s(6));
        assert_eq!(t.get(id).state(), FlowState::TcpClosed);
        assert_eq!(t.get(id).expires(), s(16));
        assert_eq!(t.lookup(&orig, s(16)), None);
    }

    #[test]
    fn rst_closes() {
        let mut t = table(16);
        let (orig, reply) = service_flow(40000, Proto::Tcp);
        let id = t.insert(orig, reply, SYN, 0, s(0)).unwrap();
        t.observe(id, Dir::Reply, SYN_ACK, s(0));
        t.observe(id, Dir::Reply, RST, s(1));
        assert_eq!(t.get(id).state(), FlowState::TcpClosed);
        assert_eq!(t.get(id).expires(), s(11));
        // Nothing but a new SYN leaves Closed.
        t.observe(id, Dir::Original, FIN_ACK, s(2));
        assert_eq!(t.get(id).state(), FlowState::TcpClosed);
    }

    #[test]
    fn rst_refused_connection_closes_from_syn_sent() {
        let mut t = table(16);
        let (orig, reply) = service_flow(40000, Proto::Tcp);
        let id = t.insert(orig, reply, SYN, 0, s(0)).unwrap();
        t.observe(id, Dir::Reply, RST, s(1));
        assert_eq!(t.get(id).state(), FlowState::TcpClosed);
        assert_eq!(t.get(id).expires(), s(11));
    }

    #[test]
    fn syn_on_a_closed_flow_reopens_it_unassured() {
        let mut t = table(16);
        let (orig, reply) = service_flow(40000, Proto::Tcp);
        let id = t.insert(orig, reply, SYN, 0, s(0)).unwrap();
        t.observe(id, Dir::Reply, SYN_ACK, s(0));
        t.observe(id, Dir::Original, FIN_ACK, s(1));
        t.observe(id, Dir::Reply, FIN_ACK, s(1));
        assert_eq!(t.get(id).state(), FlowState::TcpClosed);
        t.observe(id, Dir::Original, SYN, s(3));
        assert_eq!(t.get(id).state(), FlowState::TcpSynSent);
        assert!(!t.get(id).is_assured());
        assert_eq!(t.get(id).expires(), s(63));
        t.observe(id, Dir::Reply, SYN_ACK, s(4));
        assert_eq!(t.get(id).state(), FlowState::TcpEstablished);
        t.observe(id, Dir::Original, FIN_ACK, s(5));
        assert_eq!(
            t.get(id).state(),
            FlowState::TcpFinWait,
            "old FINs forgotten"
        );
    }

    #[test]
    fn udp_reply_extends_timeout() {
        let mut t = table(16);
        let (orig, reply) = service_flow(53000, Proto::Udp);
        let id = t.insert(orig, reply, None, 0, s(0)).unwrap();
        assert_eq!(t.get(id).state(), FlowState::UdpUnreplied);
        assert_eq!(t.get(id).expires(), s(30));
        t.observe(id, Dir::Reply, None, s(1));
        assert_eq!(t.get(id).state(), FlowState::UdpReplied);
        assert_eq!(t.get(id).expires(), s(121));
        assert!(t.get(id).is_assured());
        t.observe(id, Dir::Original, None, s(2));
        assert_eq!(t.get(id).state(), FlowState::UdpReplied);
        assert_eq!(t.get(id).expires(), s(122));
    }

    #[test]
    fn every_packet_refreshes_expiry() {
        let mut t = table(16);
        let (orig, reply) = service_flow(53000, Proto::Udp);
        let id = t.insert(orig, reply, None, 0, s(0)).unwrap();
        for now in [20, 40, 60, 80] {
            let (found, dir) = t.lookup(&orig, s(now)).unwrap();
            assert_eq!((found, dir), (id, Dir::Original));
            t.observe(id, dir, None, s(now));
        }
        assert_eq!(t.get(id).expires(), s(110));
    }

    #[test]
    fn data_belongs_to_its_flow() {
        let mut t: FlowTable<[u64; 2]> = FlowTable::new(4, Timeouts::default());
        let (o1, r1) = service_flow(1, Proto::Udp);
        let (o2, r2) = service_flow(2, Proto::Udp);
        let a = t.insert(o1, r1, None, [1, 1], s(0)).unwrap();
        let b = t.insert(o2, r2, None, [2, 2], s(0)).unwrap();
        t.get_mut(a).data[1] = 9;
        assert_eq!(t.get(a).data, [1, 9]);
        assert_eq!(t.get(b).data, [2, 2]);
    }

    /// Fills a table of `n` TCP flows from client ports 1..=n; `assured` says which
    /// slab positions saw a reply. Flow at port p expires at 60 + p seconds when
    /// unassured.
    fn full_table(n: usize, assured: impl Fn(usize) -> bool) -> FlowTable<u32> {
        let mut t = table(n);
        for i in 0..n {
            let (orig, reply) = service_flow(i as u16 + 1, Proto::Tcp);
            let id = t.insert(orig, reply, SYN, 0, s(i as u64 + 1)).unwrap();
            if assured(i) {
                t.observe(id, Dir::Reply, SYN_ACK, s(i as u64 + 1));
            }
        }
        assert_eq!(t.len(), n);
        t
    }

    #[test]
    fn full_table_evicts_unassured_before_refusing() {
        // Positions 2 and 5 are half-open; 5 expires later than 2.
        let mut t = full_table(8, |i| i != 2 && i != 5);
        let (orig, reply) = service_flow(1000, Proto::Tcp);
        t.insert(orig, reply, SYN, 0, s(10)).unwrap();
        assert_eq!(t.evictions(), 1);
        assert!(
            !t.contains(&service_flow(3, Proto::Tcp).0, s(10)),
            "earliest went"
        );
        assert!(t.contains(&service_flow(6, Proto::Tcp).0, s(10)));
        let (orig, reply) = service_flow(1001, Proto::Tcp);
        t.insert(orig, reply, SYN, 0, s(10)).unwrap();
        assert_eq!(t.evictions(), 2);
        assert!(!t.contains(&service_flow(6, Proto::Tcp).0, s(10)));
        // The newcomers are unassured too, so they go next, before any refusal.
        assert_eq!(t.insert_full(), 0);
        assert_eq!(t.len(), 8);
        t.check();
    }

    #[test]
    fn full_table_of_established_flows_refuses_new_ones() {
        let mut t = full_table(8, |_| true);
        let (orig, reply) = service_flow(1000, Proto::Tcp);
        assert_eq!(t.insert(orig, reply, SYN, 0, s(10)), Err(InsertError::Full));
        assert_eq!(t.insert_full(), 1);
        assert_eq!(t.evictions(), 0);
        assert_eq!(t.len(), 8);
        assert!(t.iter().all(|f| f.is_assured()), "nothing was evicted");
        t.check();
    }

    #[test]
    fn full_table_reuses_an_expired_flow_without_counting_an_eviction() {
        let mut t = full_table(8, |i| i != 4);
        // Port 5 (position 4) expires at 65 s; the assured ones live a day.
        let (orig, reply) = service_flow(1000, Proto::Tcp);
        t.insert(orig, reply, SYN, 0, s(70)).unwrap();
        assert_eq!(t.evictions(), 0);
        assert_eq!(t.len(), 8);
        t.check();
    }

    #[test]
    fn full_table_examines_eight_flows_from_a_rotating_cursor() {
        // The first eight slab positions are assured, the last eight are not: the
        // first insert sees only assured flows and is refused, the next one looks
        // further on and evicts.
        let mut t = full_table(16, |i| i < 8);
        let (orig, reply) = service_flow(1000, Proto::Tcp);
        assert_eq!(t.insert(orig, reply, SYN, 0, s(20)), Err(InsertError::Full));
        assert_eq!(t.insert(orig, reply, SYN, 0, s(20)).map(|_| ()), Ok(()));
        assert_eq!(t.evictions(), 1);
        assert!(!t.contains(&service_flow(9, Proto::Tcp).0, s(20)));
        t.check();
    }

    #[test]
    fn capacity_one_table_replaces_its_only_unassured_flow() {
        let mut t = table(1);
        let (o1, r1) = service_flow(1, Proto::Udp);
        let (o2, r2) = service_flow(2, Proto::Udp);
        t.insert(o1, r1, None, 0, s(0)).unwrap();
        t.insert(o2, r2, None, 0, s(1)).unwrap();
        assert!(t.contains(&o2, s(1)) && !t.contains(&o1, s(1)));
        assert_eq!(t.evictions(), 1);
        t.check();
    }

    #[test]
    fn removed_flow_frees_its_place() {
        let mut t = table(2);
        let (o1, r1) = service_flow(1, Proto::Udp);
        let (o2, r2) = service_flow(2, Proto::Udp);
        let (o3, r3) = service_flow(3, Proto::Udp);
        let a = t.insert(o1, r1, None, 0, s(0)).unwrap();
        t.insert(o2, r2, None, 0, s(0)).unwrap();
        t.remove(a);
        t.remove(a);
        assert_eq!(t.len(), 1);
        assert!(!t.contains(&o1, s(0)) && !t.contains(&r1, s(0)));
        t.insert(o3, r3, None, 0, s(0)).unwrap();
        assert_eq!((t.len(), t.evictions()), (2, 0));
        t.check();
    }

    #[test]
    fn expire_sweeps_within_its_budget() {
        let mut t = table(64);
        for p in 0..40u16 {
            let (orig, reply) = service_flow(p + 1, Proto::Udp);
            let id = t.insert(orig, reply, None, 0, s(0)).unwrap();
            if p % 2 == 0 {
                t.observe(id, Dir::Reply, None, s(0));
            }
        }
        // At 60 s the 20 unreplied flows are expired, the replied ones are not.
        assert_eq!(t.expire(s(60), 0), 0);
        assert_eq!(t.expire(s(60), 3), 3);
        // Budget 2 examines at most 8 entries, of which half are expired.
        assert!(t.expire(s(60), 2) <= 2);
        let mut total = 3 + 2;
        while t.len() > 20 {
            total += t.expire(s(60), 4);
        }
        assert_eq!(total, 20);
        assert_eq!(t.expire(s(60), 100), 0);
        assert!(t.iter().all(|f| f.state() == FlowState::UdpReplied));
        t.check();
    }

    #[test]
    fn backward_shift_keeps_colliding_keys_reachable() {
        // Capacity 16: 64 index slots. Find client ports whose original tuples share
        // one home slot, and some that home on the next slot, to build one cluster.
        let mut t: FlowTable<u16> = FlowTable::with_seed(16, Timeouts::default(), 42);
        let home =
            |t: &FlowTable<u16>, p: u16| t.tag(&service_flow(p, Proto::Udp).0) as usize & t.mask;
        let target = home(&t, 1);
        let same: Vec<u16> = (1..u16::MAX)
            .filter(|&p| home(&t, p) == target)
            .take(5)
            .collect();
        let next: Vec<u16> = (1..u16::MAX)
            .filter(|&p| home(&t, p) == (target + 1) & t.mask)
            .take(3)
            .collect();
        let ports: Vec<u16> = same.iter().chain(&next).copied().collect();
        let mut ids = Vec::new();
        for &p in &ports {
            let (orig, reply) = service_flow(p, Proto::Udp);
            ids.push(t.insert(orig, reply, None, p, s(0)).unwrap());
        }
        t.check();
        // Remove from the front, the middle and the end of the cluster.
        let mut removed = Vec::new();
        for k in [0, 6, 2, 5, 7] {
            t.remove(ids[k]);
            removed.push(k);
            t.check();
            for (j, &p) in ports.iter().enumerate() {
                let (orig, reply) = service_flow(p, Proto::Udp);
                let live = !removed.contains(&j);
                assert_eq!(t.lookup(&orig, s(1)).is_some(), live, "port {p}");
                assert_eq!(t.lookup(&reply, s(1)).is_some(), live, "port {p}");
            }
        }
    }

    #[test]
    fn tcp_flags_decode_from_the_header_byte() {
        assert_eq!(TcpFlags::from_byte(0x02), SYN.unwrap());
        assert_eq!(TcpFlags::from_byte(0x12), SYN_ACK.unwrap());
        assert_eq!(TcpFlags::from_byte(0x11), FIN_ACK.unwrap());
        assert_eq!(TcpFlags::from_byte(0x04), RST.unwrap());
        // PSH, URG, ECE, CWR do not matter to conntrack.
        assert_eq!(TcpFlags::from_byte(0xe8 | 0x10), ACK.unwrap());
    }

    #[test]
    fn default_timeouts_are_kube_proxy_and_linux_ones() {
        let t = Timeouts::default();
        assert_eq!(t.of(FlowState::TcpSynSent), s(60));
        assert_eq!(t.of(FlowState::TcpEstablished), s(86_400));
        assert_eq!(t.of(FlowState::TcpFinWait), s(120));
        assert_eq!(t.of(FlowState::TcpClosed), s(10));
        assert_eq!(t.of(FlowState::UdpUnreplied), s(30));
        assert_eq!(t.of(FlowState::UdpReplied), s(120));
    }

    #[test]
    fn a_probe_looks_up_what_its_key_looks_up() {
        let mut t = table(64);
        let flows: Vec<_> = (0..40)
            .map(|p| service_flow(40000 + p, Proto::Tcp))
            .collect();
        for &(orig, reply) in &flows {
            t.insert(orig, reply, SYN, 0, s(0)).unwrap();
        }
        let absent = tuple([10, 0, 0, 9], 1, [10, 96, 0, 10], 80, Proto::Tcp);
        let keys: Vec<FiveTuple> = flows.iter().flat_map(|&(o, r)| [o, r]).collect();
        let probes: Vec<Probe> = keys
            .iter()
            .chain([&absent])
            .map(|k| t.prefetch(k))
            .collect();
        for p in &probes {
            t.prefetch_flow(p);
        }
        t.check();
        // Removals shift index entries back: probes made before still find their flows.
        for &(orig, _) in flows.iter().step_by(3) {
            let (id, _) = t.lookup(&orig, s(1)).unwrap();
            t.remove(id);
        }
        for p in &probes {
            t.prefetch_flow(p);
            let want = t.lookup(p.key(), s(1));
            assert_eq!(t.lookup_probed(p, s(1)), want, "{:?}", p.key());
        }
        t.check();
        // And an expired flow is removed by a probed lookup as by a plain one.
        let live = t.len();
        assert_eq!(t.lookup_probed(&probes[2], s(61)), None);
        assert_eq!(t.len(), live - 1);
        t.check();
    }

    #[test]
    fn flow_sizes() {
        assert_eq!(std::mem::size_of::<FiveTuple>(), 14);
        assert_eq!(std::mem::size_of::<Flow<()>>(), 40);
        assert_eq!(std::mem::size_of::<Flow<[u64; 2]>>(), 56);
        assert_eq!(std::mem::size_of::<Flow<[u32; 4]>>(), 56);
    }

    // --- Model check -------------------------------------------------------------

    #[derive(Clone, Debug)]
    enum Op {
        Insert(u8, u8),
        Lookup(u8),
        /// A lookup with the key's probe made before the first op.
        LookupProbed(u8),
        Observe(u8),
        Remove(u8),
        Expire(usize),
        Advance(u64),
    }

    /// 24 UDP tuples over few addresses and ports, so inserts collide often.
    fn pool(i: u8) -> FiveTuple {
        let i = i % 24;
        tuple(
            [10, 0, 0, i % 3],
            1000 + (i / 3 % 2) as u16,
            [10, 0, 1, i / 6 % 2],
            53 + (i / 12) as u16,
            Proto::Udp,
        )
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => (0..24u8, 0..24u8).prop_map(|(o, r)| Op::Insert(o, r)),
            2 => (0..24u8).prop_map(Op::Lookup),
            2 => (0..24u8).prop_map(Op::LookupProbed),
            2 => (0..24u8).prop_map(Op::Observe),
            1 => (0..24u8).prop_map(Op::Remove),
            1 => (0..6usize).prop_map(Op::Expire),
            1 => (0..50u64).prop_map(Op::Advance),
        ]
    }

    #[derive(Clone, Copy, Debug)]
    struct ModelFlow {
        reply: FiveTuple,
        expires: Nanos,
        assured: bool,
    }

    /// Flows by original tuple, with the table's UDP rules restated.
    #[derive(Default)]
    struct Model {
        flows: HashMap<FiveTuple, ModelFlow>,
    }

    impl Model {
        fn find(&self, key: &FiveTuple) -> Option<(FiveTuple, Dir)> {
            self.flows.iter().find_map(|(o, f)| {
                if o == key {
                    Some((*o, Dir::Original))
                } else if &f.reply == key {
                    Some((*o, Dir::Reply))
                } else {
                    None
                }
            })
        }
        /// As `FlowTable::lookup`: expired flows are removed and not found.
        fn lookup(&mut self, key: &FiveTuple, now: Nanos) -> Option<(FiveTuple, Dir)> {
            let (o, dir) = self.find(key)?;
            if now >= self.flows[&o].expires {
                self.flows.remove(&o);
                return None;
            }
            Some((o, dir))
        }
        fn observe(&mut self, o: &FiveTuple, dir: Dir, now: Nanos) {
            let f = self.flows.get_mut(o).unwrap();
            f.assured |= dir == Dir::Reply;
            f.expires = now.saturating_add(if f.assured { s(120) } else { s(30) });
        }
    }

    /// The flows the table holds, by original tuple.
    fn held<T: Copy>(t: &FlowTable<T>) -> Vec<FiveTuple> {
        t.iter().map(|f| *f.orig()).collect()
    }

    fn run(capacity: usize, ops: &[Op]) -> Result<(), TestCaseError> {
        let mut t: FlowTable<u8> = FlowTable::new(capacity, Timeouts::default());
        let mut m = Model::default();
        let mut now = s(0);
        // Made before any flow exists: a probe stays right whatever the index does.
        let probes: Vec<Probe> = (0..24).map(|k| t.prefetch(&pool(k))).collect();
        for op in ops {
            match *op {
                Op::Advance(secs) => now = now.saturating_add(s(secs)),
                Op::Lookup(k) | Op::LookupProbed(k) => {
                    let key = pool(k);
                    let want = m.lookup(&key, now);
                    let got = match op {
                        Op::LookupProbed(_) => t.lookup_probed(&probes[(k % 24) as usize], now),
                        _ => t.lookup(&key, now),
                    };
                    prop_assert_eq!(got.map(|(_, d)| d), want.map(|(_, d)| d));
                    if let (Some((id, _)), Some((o, _))) = (got, want) {
                        prop_assert_eq!(t.get(id).orig(), &o);
                    }
                }
                Op::Observe(k) => {
                    let key = pool(k);
                    if let Some((o, dir)) = m.lookup(&key, now) {
                        m.observe(&o, dir, now);
                    }
                    if let Some((id, dir)) = t.lookup(&key, now) {
                        t.observe(id, dir, None, now);
                        let f = &m.flows[t.get(id).orig()];
                        prop_assert_eq!(t.get(id).expires(), f.expires);
                        prop_assert_eq!(t.get(id).is_assured(), f.assured);
                    }
                }
                Op::Remove(k) => {
                    let key = pool(k);
                    if let Some((o, _)) = m.lookup(&key, now) {
                        m.flows.remove(&o);
                    }
                    if let Some((id, _)) = t.lookup(&key, now) {
                        t.remove(id);
                    }
                }
                Op::Expire(budget) => {
                    let examined_all = budget * 4 >= t.slab.len();
                    let removed = t.expire(now, budget);
                    prop_assert!(removed <= budget);
                    let before = m.flows.len();
                    let held = held(&t);
                    for (o, f) in m.flows.iter().filter(|(o, _)| !held.contains(o)) {
                        prop_assert!(now >= f.expires, "swept live flow {:?}", o);
                    }
                    m.flows.retain(|o, _| held.contains(o));
                    prop_assert_eq!(before - m.flows.len(), removed);
                    if examined_all && removed < budget {
                        prop_assert!(m.flows.values().all(|f| now < f.expires));
                    }
                }
                Op::Insert(o, r) => {
                    let (orig, reply) = (pool(o), pool(r));
                    if orig == reply {
                        continue;
                    }
                    let exists = m.lookup(&orig, now).is_some() || m.lookup(&reply, now).is_some();
                    let full = m.flows.len() == capacity;
                    let (evictions, insert_full) = (t.evictions(), t.insert_full());
                    let got = t.insert(orig, reply, None, o, now);
                    if exists {
                        prop_assert_eq!(got, Err(InsertError::Exists));
                    } else if !full {
                        prop_assert!(got.is_ok());
                    } else if got.is_ok() {
                        let held = held(&t);
                        let gone: Vec<(FiveTuple, ModelFlow)> = m
                            .flows
                            .iter()
                            .filter(|(o, _)| !held.contains(o))
                            .map(|(o, f)| (*o, *f))
                            .collect();
                        prop_assert_eq!(gone.len(), 1);
                        let (victim, f) = gone[0];
                        let expired = now >= f.expires;
                        prop_assert!(expired || !f.assured, "evicted assured {:?}", victim);
                        prop_assert_eq!(t.evictions(), evictions + u64::from(!expired));
                        m.flows.remove(&victim);
                    } else {
                        prop_assert_eq!(got, Err(InsertError::Full));
                        prop_assert_eq!(t.insert_full(), insert_full + 1);
                        let assured = m
                            .flows
                            .values()
                            .filter(|f| f.assured && now < f.expires)
                            .count();
                        prop_assert!(assured >= EVICTION_RANGE.min(capacity));
                    }
                    if got.is_ok() {
                        m.flows.insert(
                            orig,
                            ModelFlow {
                                reply,
                                expires: now.saturating_add(s(30)),
                                assured: false,
                            },
                        );
                    }
                }
            }
            // Hints: whatever they touch, the checks below see no change.
            for p in &probes {
                t.prefetch_flow(p);
            }
            prop_assert_eq!(t.len(), m.flows.len());
            prop_assert!(t.len() <= capacity);
            t.check();
            for (o, f) in &m.flows {
                let live = now < f.expires;
                prop_assert_eq!(t.contains(o, now), live);
                prop_assert_eq!(t.contains(&f.reply, now), live);
            }
        }
        Ok(())
    }

    proptest! {
        #[test]
        fn table_agrees_with_a_hashmap_model(
            capacity in 1..12usize,
            ops in proptest::collection::vec(op(), 1..200),
        ) {
            run(capacity, &ops)?;
        }
    }
}
