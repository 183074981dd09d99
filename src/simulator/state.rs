//! The simulator's in-memory world: merchants, tokens, orders, images, faults,
//! counters and the request log. One `State` behind one mutex is shared by all
//! workers, so every worker sees the same upstream.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;

use super::image::ImageFormat;
use super::model::v3::StoredCategory;
use super::model::OrderCategory;
use super::{SimMerchant, SimulatorSettings};

/// How many requests the log keeps (the oldest are dropped first).
pub const REQUEST_LOG_CAPACITY: usize = 10_000;

/// How many orders the simulator holds by default (`--max-orders`,
/// `maxOrders`): past it, the order changed longest ago is forgotten, so a
/// load test against a simulator that runs for days keeps its memory and its
/// speed.
pub const DEFAULT_MAX_ORDERS: usize = 10_000;

/// The upstream endpoints, by the names the control API uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    Token,
    Image,
    Category,
    Receipt,
    Order,
    V1OrderPut,
    V1OrderGet,
    V1ReceiptGet,
    V1ReceiptPost,
    /// Order Management 2.1's several links per order.
    V3CategoryPost,
    V3CategoryList,
    V3CategoryGet,
    V3CategoryDelete,
}

impl Endpoint {
    pub const ALL: [Endpoint; 13] = [
        Endpoint::Token,
        Endpoint::Image,
        Endpoint::Category,
        Endpoint::Receipt,
        Endpoint::Order,
        Endpoint::V1OrderPut,
        Endpoint::V1OrderGet,
        Endpoint::V1ReceiptGet,
        Endpoint::V1ReceiptPost,
        Endpoint::V3CategoryPost,
        Endpoint::V3CategoryList,
        Endpoint::V3CategoryGet,
        Endpoint::V3CategoryDelete,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Endpoint::Token => "token",
            Endpoint::Image => "image",
            Endpoint::Category => "category",
            Endpoint::Receipt => "receipt",
            Endpoint::Order => "order",
            Endpoint::V1OrderPut => "v1-order-put",
            Endpoint::V1OrderGet => "v1-order-get",
            Endpoint::V1ReceiptGet => "v1-receipt-get",
            Endpoint::V1ReceiptPost => "v1-receipt-post",
            Endpoint::V3CategoryPost => "v3-category-post",
            Endpoint::V3CategoryList => "v3-category-list",
            Endpoint::V3CategoryGet => "v3-category-get",
            Endpoint::V3CategoryDelete => "v3-category-delete",
        }
    }

    pub fn from_name(name: &str) -> Option<Endpoint> {
        Endpoint::ALL.into_iter().find(|e| e.name() == name)
    }
}

/// A token this simulator issued.
pub struct IssuedToken {
    pub msn: String,
    pub expires_at: Instant,
}

/// Category and receipt of one (msn, paymentType, orderId).
#[derive(Default)]
pub struct OrderRecord {
    pub category: Option<OrderCategory>,
    /// Kept as received, as JSON text: a parsed tree took ten times the
    /// memory.
    pub receipt: Option<Box<RawValue>>,
}

pub struct ImageRecord {
    pub format: ImageFormat,
    pub bytes: usize,
    pub height: u32,
    /// The image itself, for the receipt pages; `None` once the simulator
    /// let go of it to stay within [`IMAGE_BYTES_HELD`].
    pub data: Option<bytes::Bytes>,
}

/// How many bytes of uploaded images the simulator keeps to show on its
/// receipt pages (32 images of the 2,000,000 bytes Vipps allows); past it,
/// the oldest images' bytes are let go (their facts stay).
pub const IMAGE_BYTES_HELD: usize = 64 * 1024 * 1024;

/// How many uploaded images the simulator knows of at most (their format,
/// size and height, a few hundred bytes each); past it, the oldest image is
/// forgotten, as if it had never been uploaded.
pub const IMAGES_KNOWN: usize = 100_000;

/// How long an expired token is still told apart from one never issued
/// (`Expired access token` rather than `Unknown access token`), before a
/// later issue lets go of it.
pub const EXPIRED_TOKENS_KEPT: Duration = Duration::from_secs(3600);

/// The fewest tokens held before an issue looks for expired ones to let go.
const TOKENS_PRUNED_FROM: usize = 1024;

/// When something was last stored for an order (a receipt, a category or a
/// 2.1 link), for the index's newest-first order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Activity {
    /// Increases with every store, so two stores in one millisecond keep
    /// their order.
    pub seq: u64,
    /// Unix milliseconds.
    pub at_ms: u64,
}

/// The current time in Unix milliseconds.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A fault rule as the control API receives it.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FaultSpec {
    #[serde(default)]
    pub endpoint: Option<String>,
    #[serde(default)]
    pub msn: Option<String>,
    #[serde(default)]
    pub status: Option<u16>,
    #[serde(default)]
    pub body: Option<Value>,
    #[serde(default)]
    pub retry_after: Option<String>,
    #[serde(default)]
    pub delay_ms: Option<u64>,
    #[serde(default)]
    pub drop: bool,
    #[serde(default)]
    pub after_store: bool,
    #[serde(default)]
    pub times: Option<u64>,
    /// Applies to this percentage of matching requests (drawn from the
    /// simulator's seeded generator, so a run is repeatable); all when absent.
    #[serde(default)]
    pub percent: Option<u8>,
}

impl FaultSpec {
    /// Whether the fault replaces the answer (rather than only delaying it).
    pub fn answers(&self) -> bool {
        self.drop || self.status.is_some()
    }
}

/// A fault rule with its id and how many more requests it applies to.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FaultRule {
    pub id: u64,
    #[serde(flatten)]
    pub spec: FaultSpec,
    /// `None`: every matching request until the rules are cleared.
    pub remaining: Option<u64>,
}

/// One request as the upstream endpoints saw it.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LoggedRequest {
    pub endpoint: &'static str,
    pub method: String,
    pub path: String,
    pub query: String,
    pub headers: BTreeMap<String, String>,
    /// As JSON text (a parsed tree took several times the memory), `null`
    /// when the body was not JSON.
    pub body: Box<RawValue>,
    pub status: u16,
    /// When it arrived, in Unix milliseconds: how fast a caller sent.
    pub at_ms: u64,
}

#[derive(Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Counters {
    pub token_fetches: BTreeMap<String, u64>,
    pub token_rejections: BTreeMap<String, u64>,
    pub calls: BTreeMap<&'static str, u64>,
    /// Orders forgotten to stay within `maxOrders`.
    pub orders_forgotten: u64,
    /// Images forgotten to stay within [`IMAGES_KNOWN`].
    pub images_forgotten: u64,
}

pub struct State {
    pub merchants: Vec<SimMerchant>,
    pub token_ttl: Duration,
    pub tokens: HashMap<String, IssuedToken>,
    /// How many tokens are held when the next issue lets go of those
    /// expired longer than [`EXPIRED_TOKENS_KEPT`]: twice as many as were
    /// left the last time, so an issue costs the same on average.
    pub prune_tokens_at: usize,
    /// Keyed by (msn, paymentType, orderId).
    pub orders: BTreeMap<(String, String, String), OrderRecord>,
    /// Keyed by (msn, imageId).
    pub images: BTreeMap<(String, String), ImageRecord>,
    /// Every image known, oldest first: the next to forget past
    /// [`IMAGES_KNOWN`].
    pub images_known: VecDeque<(String, String)>,
    /// Images whose bytes are held, oldest first, and their total size.
    pub images_held: VecDeque<(String, String)>,
    pub image_bytes_held: usize,
    /// Keyed by (msn, paymentType, orderId): when the order last changed.
    /// Every order the simulator holds (a receipt, a category or a 2.1
    /// link stored for it) is here.
    pub activity: HashMap<(String, String, String), Activity>,
    /// The same orders by their last change's `seq`, oldest first: the
    /// next to forget past `max_orders`.
    pub by_activity: BTreeMap<u64, (String, String, String)>,
    pub next_activity_seq: u64,
    /// How many orders are held at most.
    pub max_orders: usize,
    /// 2.1's category links, keyed by (msn, categoryId): an id is only
    /// found by the merchant that created it.
    pub categories: BTreeMap<(String, uuid::Uuid), StoredCategory>,
    /// The ids of each order's 2.1 links, keyed by (msn, paymentType,
    /// orderId), so that an order is forgotten with its links.
    pub order_links: HashMap<(String, String, String), Vec<uuid::Uuid>>,
    /// Creation order of the links, so lists come out oldest first.
    pub next_category_seq: u64,
    pub faults: Vec<FaultRule>,
    pub next_fault_id: u64,
    /// State of the generator behind `percent` faults.
    pub rng: u64,
    pub counters: Counters,
    pub log: VecDeque<LoggedRequest>,
    /// Whether upstream requests are logged (on unless a benchmark turns
    /// it off: building an entry copies every header and parses the body).
    pub request_log: bool,
}

impl State {
    pub fn new(settings: &SimulatorSettings) -> Self {
        let mut state = State {
            merchants: Vec::new(),
            token_ttl: settings.token_ttl,
            tokens: HashMap::new(),
            prune_tokens_at: TOKENS_PRUNED_FROM,
            orders: BTreeMap::new(),
            images: BTreeMap::new(),
            images_known: VecDeque::new(),
            images_held: VecDeque::new(),
            image_bytes_held: 0,
            activity: HashMap::new(),
            by_activity: BTreeMap::new(),
            next_activity_seq: 0,
            max_orders: settings.max_orders.max(1),
            categories: BTreeMap::new(),
            order_links: HashMap::new(),
            next_category_seq: 0,
            faults: Vec::new(),
            next_fault_id: 1,
            rng: DEFAULT_SEED,
            counters: Counters::default(),
            log: VecDeque::new(),
            request_log: true,
        };
        for merchant in &settings.merchants {
            state.upsert_merchant(merchant.clone());
        }
        state.reset_counters();
        state
    }

    /// Adds a merchant, replacing the one with the same MSN.
    pub fn upsert_merchant(&mut self, merchant: SimMerchant) {
        self.counters
            .token_fetches
            .entry(merchant.msn.clone())
            .or_insert(0);
        match self.merchants.iter_mut().find(|m| m.msn == merchant.msn) {
            Some(existing) => *existing = merchant,
            None => self.merchants.push(merchant),
        }
    }

    pub fn merchant_by_msn(&self, msn: &str) -> Option<&SimMerchant> {
        self.merchants.iter().find(|m| m.msn == msn)
    }

    pub fn merchant_by_client_id(&self, client_id: &str) -> Option<&SimMerchant> {
        self.merchants.iter().find(|m| m.client_id == client_id)
    }

    /// Counters start at zero for every endpoint and merchant, so a reader
    /// never has to tell "absent" from "zero".
    fn reset_counters(&mut self) {
        self.counters = Counters::default();
        for e in Endpoint::ALL {
            self.counters.calls.insert(e.name(), 0);
        }
        for m in &self.merchants {
            self.counters.token_fetches.insert(m.msn.clone(), 0);
        }
    }

    pub fn count_call(&mut self, endpoint: Endpoint) {
        *self.counters.calls.entry(endpoint.name()).or_insert(0) += 1;
    }

    /// Counts a 401, under the MSN when it names a configured merchant (so the
    /// label set stays bounded) and under `unknown` otherwise.
    pub fn count_rejection(&mut self, msn: Option<&str>) {
        let key = match msn {
            Some(msn) if self.merchant_by_msn(msn).is_some() => msn.to_owned(),
            _ => "unknown".to_owned(),
        };
        *self.counters.token_rejections.entry(key).or_insert(0) += 1;
    }

    /// The first rule (in creation order) that matches and has uses left; its
    /// count goes down by one.
    pub fn take_fault(&mut self, endpoint: Endpoint, msn: Option<&str>) -> Option<FaultSpec> {
        let rng = &mut self.rng;
        let rule = self.faults.iter_mut().find(|rule| {
            rule.remaining != Some(0)
                && rule
                    .spec
                    .endpoint
                    .as_deref()
                    .is_none_or(|e| e == endpoint.name())
                && rule.spec.msn.as_deref().is_none_or(|m| Some(m) == msn)
                && rule
                    .spec
                    .percent
                    .is_none_or(|p| next_random(rng) % 100 < u64::from(p))
        })?;
        if let Some(n) = rule.remaining.as_mut() {
            *n -= 1;
        }
        Some(rule.spec.clone())
    }

    pub fn add_fault(&mut self, spec: FaultSpec) -> u64 {
        let id = self.next_fault_id;
        self.next_fault_id += 1;
        self.faults.push(FaultRule {
            id,
            remaining: spec.times,
            spec,
        });
        id
    }

    pub fn log_request(&mut self, entry: LoggedRequest) {
        if self.log.len() >= REQUEST_LOG_CAPACITY {
            self.log.pop_front();
        }
        self.log.push_back(entry);
    }

    /// Notes that something was stored for the order under `key`, then
    /// forgets the orders changed longest ago while more than `max_orders`
    /// are held.
    pub fn touch(&mut self, key: (String, String, String)) {
        let seq = self.next_activity_seq;
        self.next_activity_seq += 1;
        let now = Activity {
            seq,
            at_ms: unix_ms(),
        };
        if let Some(before) = self.activity.insert(key.clone(), now) {
            self.by_activity.remove(&before.seq);
        }
        self.by_activity.insert(seq, key);
        self.forget_past(self.max_orders);
    }

    /// Forgets the orders changed longest ago, with their receipts,
    /// categories and 2.1 links, until at most `max` are held.
    pub fn forget_past(&mut self, max: usize) {
        while self.activity.len() > max {
            let Some((_, key)) = self.by_activity.pop_first() else {
                break;
            };
            self.activity.remove(&key);
            self.orders.remove(&key);
            for id in self.order_links.remove(&key).unwrap_or_default() {
                self.categories.remove(&(key.0.clone(), id));
            }
            self.counters.orders_forgotten += 1;
        }
    }

    /// Adds a 2.1 link to an order, which counts as a change of it.
    pub fn add_link(
        &mut self,
        order: (String, String, String),
        id: uuid::Uuid,
        link: StoredCategory,
    ) {
        self.categories.insert((order.0.clone(), id), link);
        self.order_links.entry(order.clone()).or_default().push(id);
        self.touch(order);
    }

    /// Removes a merchant's 2.1 link; `None` when it has none by that id.
    pub fn remove_link(&mut self, key: &(String, uuid::Uuid)) -> Option<StoredCategory> {
        let link = self.categories.remove(key)?;
        let order = (
            key.0.clone(),
            link.request.payment_type.lower().to_owned(),
            link.request.order_id.clone(),
        );
        if let Some(ids) = self.order_links.get_mut(&order) {
            ids.retain(|id| *id != key.1);
            if ids.is_empty() {
                self.order_links.remove(&order);
            }
        }
        Some(link)
    }

    /// Stores an uploaded image with its bytes, letting go of the oldest
    /// images' bytes while more than [`IMAGE_BYTES_HELD`] are held, and of
    /// the oldest images while more than [`IMAGES_KNOWN`] are known.
    pub fn add_image(&mut self, key: (String, String), record: ImageRecord) {
        self.add_image_within(key, record, IMAGE_BYTES_HELD, IMAGES_KNOWN);
    }

    fn add_image_within(
        &mut self,
        key: (String, String),
        mut record: ImageRecord,
        held: usize,
        known: usize,
    ) {
        if let Some(data) = &record.data {
            if data.len() > held {
                record.data = None;
            } else {
                self.image_bytes_held += data.len();
                self.images_held.push_back(key.clone());
            }
        }
        self.images_known.push_back(key.clone());
        self.images.insert(key, record);
        while self.images.len() > known.max(1) {
            let Some(oldest) = self.images_known.pop_front() else {
                break;
            };
            let Some(forgotten) = self.images.remove(&oldest) else {
                continue;
            };
            if let Some(data) = forgotten.data {
                self.image_bytes_held -= data.len();
                if let Some(at) = self.images_held.iter().position(|k| *k == oldest) {
                    self.images_held.remove(at);
                }
            }
            self.counters.images_forgotten += 1;
        }
        while self.image_bytes_held > held {
            let Some(oldest) = self.images_held.pop_front() else {
                break;
            };
            if let Some(data) = self.images.get_mut(&oldest).and_then(|i| i.data.take()) {
                self.image_bytes_held -= data.len();
            }
        }
    }

    /// Holds a newly issued token. When [`State::prune_tokens_at`] are
    /// held, first lets go of those that expired more than
    /// [`EXPIRED_TOKENS_KEPT`] ago: one of them is then `Unknown access
    /// token`, still a `401`. Tokens that are live stay, however many.
    pub fn issue_token(&mut self, token: String, issued: IssuedToken) {
        self.issue_token_within(token, issued, EXPIRED_TOKENS_KEPT, Instant::now());
    }

    fn issue_token_within(
        &mut self,
        token: String,
        issued: IssuedToken,
        kept: Duration,
        now: Instant,
    ) {
        if self.tokens.len() >= self.prune_tokens_at {
            self.tokens.retain(|_, t| t.expires_at + kept > now);
            self.prune_tokens_at = (2 * self.tokens.len()).max(TOKENS_PRUNED_FROM);
            // After a burst, the table's room goes with its tokens.
            self.tokens.shrink_to(self.prune_tokens_at);
        }
        self.tokens.insert(token, issued);
    }

    /// Expires every token held; returns how many there are.
    pub fn expire_tokens(&mut self) -> usize {
        let now = Instant::now();
        for token in self.tokens.values_mut() {
            token.expires_at = token.expires_at.min(now);
        }
        self.tokens.len()
    }

    /// Forgets everything but the merchants and the token lifetime.
    pub fn reset(&mut self) {
        self.rng = DEFAULT_SEED;
        self.tokens.clear();
        self.prune_tokens_at = TOKENS_PRUNED_FROM;
        self.orders.clear();
        self.images.clear();
        self.images_known.clear();
        self.images_held.clear();
        self.image_bytes_held = 0;
        self.activity.clear();
        self.by_activity.clear();
        self.next_activity_seq = 0;
        self.categories.clear();
        self.order_links.clear();
        self.next_category_seq = 0;
        self.faults.clear();
        self.log.clear();
        self.reset_counters();
    }
}

/// Seed of the `percent` fault generator (after start and every reset).
pub const DEFAULT_SEED: u64 = 0x9E37_79B9_7F4A_7C15;

/// xorshift64*: small, fast and repeatable; fault injection needs no more.
pub fn next_random(state: &mut u64) -> u64 {
    let mut x = *state;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *state = x;
    x.wrapping_mul(0x2545_F491_4F6C_DD1D)
}

/// The state shared by every worker.
#[derive(Clone)]
pub struct Shared(Arc<Mutex<State>>);

impl Shared {
    pub fn new(state: State) -> Self {
        Shared(Arc::new(Mutex::new(state)))
    }

    /// A panic while holding the lock cannot leave `State` half-updated in a
    /// way that matters to a test double, so a poisoned lock is still used.
    pub fn lock(&self) -> MutexGuard<'_, State> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(len: usize) -> ImageRecord {
        ImageRecord {
            format: ImageFormat::Png,
            bytes: len,
            height: 200,
            data: Some(bytes::Bytes::from(vec![0; len])),
        }
    }

    fn held(state: &State, id: &str) -> bool {
        state
            .images
            .get(&("1".to_owned(), id.to_owned()))
            .is_some_and(|i| i.data.is_some())
    }

    #[test]
    fn the_oldest_images_bytes_go_first_and_their_facts_stay() {
        let mut state = State::new(&SimulatorSettings::demo());
        for id in ["a", "b", "c"] {
            state.add_image_within(("1".into(), id.into()), image(4), 10, 100);
        }
        assert!(!held(&state, "a"));
        assert!(held(&state, "b") && held(&state, "c"));
        assert_eq!(state.image_bytes_held, 8);
        assert_eq!(state.images.len(), 3, "facts of every image stay");
        state.add_image_within(("1".into(), "huge".into()), image(11), 10, 100);
        assert!(
            !held(&state, "huge"),
            "an image over the bound is never held"
        );
        assert!(held(&state, "b") && held(&state, "c"));
        state.reset();
        assert_eq!(state.image_bytes_held, 0);
        assert!(state.images_held.is_empty());
    }

    #[test]
    fn past_the_images_known_the_oldest_is_forgotten_with_its_bytes() {
        let mut state = State::new(&SimulatorSettings::demo());
        for id in ["a", "b", "c", "d"] {
            state.add_image_within(("1".into(), id.into()), image(4), 10, 3);
        }
        let known: Vec<&str> = state.images.keys().map(|k| k.1.as_str()).collect();
        assert_eq!(known, ["b", "c", "d"], "the oldest, a, is forgotten");
        assert_eq!(state.counters.images_forgotten, 1);
        // b's bytes went for the byte bound before b itself is forgotten.
        assert!(!held(&state, "b") && held(&state, "c") && held(&state, "d"));
        // Forgetting c, which is held, takes its bytes with it.
        state.add_image_within(("1".into(), "e".into()), image(1), 10, 3);
        state.add_image_within(("1".into(), "f".into()), image(1), 10, 3);
        let known: Vec<&str> = state.images.keys().map(|k| k.1.as_str()).collect();
        assert_eq!(known, ["d", "e", "f"]);
        assert_eq!(state.image_bytes_held, 6, "d's 4 and 1 each for e and f");
        assert_eq!(state.images_held.len(), 3);
        assert_eq!(state.images_known.len(), 3);
        assert_eq!(state.counters.images_forgotten, 3);
        // A forgotten image is as if never uploaded: its id is new again.
        state.add_image_within(("1".into(), "a".into()), image(1), 10, 3);
        let known: Vec<&str> = state.images.keys().map(|k| k.1.as_str()).collect();
        assert_eq!(known, ["a", "e", "f"]);
        assert_eq!(state.image_bytes_held, 3);
        state.reset();
        assert!(state.images_known.is_empty());
        assert_eq!(state.counters.images_forgotten, 0);
    }

    #[test]
    fn an_issue_lets_go_of_tokens_expired_long_ago_and_keeps_the_live() {
        let mut state = State::new(&SimulatorSettings::demo());
        let now = Instant::now();
        let token = |expires_at| IssuedToken {
            msn: "1".into(),
            expires_at,
        };
        let kept = Duration::from_secs(60);
        for n in 0..TOKENS_PRUNED_FROM {
            // Half expired at `now` (not yet past `kept`), half live.
            let expires_at = if n % 2 == 0 { now } else { now + kept };
            state.issue_token_within(format!("t{n}"), token(expires_at), kept, now);
        }
        assert_eq!(state.tokens.len(), TOKENS_PRUNED_FROM, "none let go yet");
        // Later than `kept` past `now`: the expired half goes at the next issue.
        let later = now + kept + Duration::from_secs(1);
        state.issue_token_within("new".into(), token(later + kept), kept, later);
        assert_eq!(state.tokens.len(), TOKENS_PRUNED_FROM / 2 + 1);
        assert!(state.tokens.contains_key("t1") && !state.tokens.contains_key("t0"));
        assert_eq!(state.prune_tokens_at, TOKENS_PRUNED_FROM);
        // Within `kept`, an expired token is still held (and told apart).
        let mut fresh = State::new(&SimulatorSettings::demo());
        for n in 0..=TOKENS_PRUNED_FROM {
            fresh.issue_token_within(format!("t{n}"), token(now), kept, now + kept / 2);
        }
        assert_eq!(fresh.tokens.len(), TOKENS_PRUNED_FROM + 1);
        assert_eq!(fresh.prune_tokens_at, 2 * TOKENS_PRUNED_FROM);
    }

    /// Every order held is in both activity maps, every link belongs to an
    /// order held, and no more than `max_orders` are held.
    fn check_held(state: &State) {
        assert!(state.activity.len() <= state.max_orders);
        assert_eq!(state.by_activity.len(), state.activity.len());
        for (seq, key) in &state.by_activity {
            assert_eq!(state.activity.get(key).map(|a| a.seq), Some(*seq));
        }
        for key in state.orders.keys() {
            assert!(state.activity.contains_key(key), "{key:?} held untracked");
        }
        let mut links = 0;
        for (order, ids) in &state.order_links {
            assert!(
                state.activity.contains_key(order),
                "links of {order:?} kept"
            );
            assert!(!ids.is_empty());
            for id in ids {
                let link = &state.categories[&(order.0.clone(), *id)];
                assert_eq!(link.request.order_id, order.2);
                assert_eq!(link.request.payment_type.lower(), order.1);
            }
            links += ids.len();
        }
        assert_eq!(links, state.categories.len());
    }

    #[test]
    fn past_max_orders_the_least_recently_changed_go_with_their_links() {
        use crate::simulator::model::v3::{AddCategoryRequest, PaymentType};
        use crate::simulator::model::Category;
        let mut state = State::new(&SimulatorSettings {
            max_orders: 8,
            ..SimulatorSettings::demo()
        });
        let mut rng = DEFAULT_SEED;
        let mut ids = Vec::new();
        let mut last = HashMap::new();
        let mut forgotten = 0;
        for step in 0..5_000u64 {
            let order = format!("o-{}", next_random(&mut rng) % 20);
            let key = ("1".to_owned(), "ecom".to_owned(), order.clone());
            let (held, full) = (state.activity.contains_key(&key), state.activity.len() == 8);
            match next_random(&mut rng) % 4 {
                0 => {
                    let id = uuid::Uuid::from_u64_pair(step, 0);
                    let request = AddCategoryRequest {
                        order_id: order,
                        payment_type: PaymentType::Ecom,
                        kind: Category::Ticket,
                        url: "https://shop.example/t".into(),
                        image_id: None,
                    };
                    state.add_link(key.clone(), id, StoredCategory { request, seq: step });
                    ids.push(id);
                }
                1 if !ids.is_empty() => {
                    let id = ids.swap_remove(
                        usize::try_from(next_random(&mut rng)).unwrap_or(0) % ids.len(),
                    );
                    state.remove_link(&("1".to_owned(), id));
                    check_held(&state);
                    continue;
                }
                _ => {
                    state.orders.entry(key.clone()).or_default();
                    state.touch(key.clone());
                }
            }
            last.insert(key, step);
            forgotten += u64::from(!held && full);
            check_held(&state);
            // The orders held are the last changed.
            let mut newest: Vec<_> = last.iter().collect();
            newest.sort_by_key(|(_, step)| std::cmp::Reverse(**step));
            let want: std::collections::BTreeSet<_> = newest
                .iter()
                .take(8)
                .map(|(key, _)| (*key).clone())
                .collect();
            let held: std::collections::BTreeSet<_> = state.activity.keys().cloned().collect();
            assert_eq!(held, want, "at step {step}");
        }
        assert!(
            forgotten > 1_000,
            "the bound was reached often: {forgotten}"
        );
        assert_eq!(
            state.counters.orders_forgotten, forgotten,
            "a change of an order not held, at the bound, forgets one"
        );
        state.reset();
        check_held(&state);
        assert!(state.by_activity.is_empty() && state.order_links.is_empty());
    }
}
