//! Resource arithmetic: a bag of named scalars (`cpus`, `mem`, `disk`, …),
//! ranges (`ports`) and sets, with exact addition, subtraction and
//! containment.
//!
//! Scalars are held as integer thousandths, as Mesos does (its `Value::Scalar`
//! is fixed-point with three decimal digits), so that adding and subtracting
//! `0.1` a thousand times lands exactly where it started.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::ser::{Serialize, SerializeMap, Serializer};

use crate::v1::{self, value};

/// Why a resource string or message was refused.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ResourceError {
    #[error("resource `{0}`: expected `name:value`")]
    MissingColon(String),
    #[error("resource `{name}`: `{value}` is not a number")]
    NotANumber { name: String, value: String },
    #[error("resource `{name}`: {value} must be a finite number >= 0")]
    OutOfRange { name: String, value: f64 },
    #[error(
        "resource `{name}`: range `{range}` is malformed (want `[begin-end, ...]` with begin <= end)"
    )]
    BadRange { name: String, range: String },
    #[error("resource name must not be empty")]
    EmptyName,
    #[error("resource `{0}` appears twice with different types")]
    MixedTypes(String),
}

/// Inclusive integer ranges, kept sorted and merged.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RangeSet(Vec<(u64, u64)>);

impl RangeSet {
    /// A set of the given inclusive ranges (merged and sorted).
    pub fn new(ranges: impl IntoIterator<Item = (u64, u64)>) -> Self {
        let mut set = RangeSet::default();
        for (begin, end) in ranges {
            set.add_range(begin, end);
        }
        set
    }

    /// The inclusive ranges, sorted, non-overlapping, non-adjacent.
    pub fn ranges(&self) -> &[(u64, u64)] {
        &self.0
    }

    /// How many integers the set holds.
    pub fn len(&self) -> u64 {
        self.0.iter().map(|(b, e)| e - b + 1).sum()
    }

    /// Whether the set holds nothing.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn add_range(&mut self, begin: u64, end: u64) {
        self.0.push((begin, end));
        self.0.sort_unstable();
        let mut merged: Vec<(u64, u64)> = Vec::with_capacity(self.0.len());
        for &(b, e) in &self.0 {
            match merged.last_mut() {
                Some(last) if b <= last.1.saturating_add(1) => last.1 = last.1.max(e),
                _ => merged.push((b, e)),
            }
        }
        self.0 = merged;
    }

    fn add(&mut self, other: &RangeSet) {
        for &(b, e) in &other.0 {
            self.add_range(b, e);
        }
    }

    /// Whether every integer of `other` is in `self`.
    pub fn contains(&self, other: &RangeSet) -> bool {
        other
            .0
            .iter()
            .all(|&(b, e)| self.0.iter().any(|&(sb, se)| sb <= b && e <= se))
    }

    fn subtract(&mut self, other: &RangeSet) {
        for &(b, e) in &other.0 {
            let mut next = Vec::with_capacity(self.0.len() + 1);
            for &(sb, se) in &self.0 {
                if e < sb || b > se {
                    next.push((sb, se));
                    continue;
                }
                if sb < b {
                    next.push((sb, b - 1));
                }
                if e < se {
                    next.push((e + 1, se));
                }
            }
            self.0 = next;
        }
    }

    /// The first `count` integers of the set, or `None` if it holds fewer.
    pub fn take_first(&self, count: u64) -> Option<RangeSet> {
        let mut left = count;
        let mut taken = Vec::new();
        for &(b, e) in &self.0 {
            if left == 0 {
                break;
            }
            let n = (e - b + 1).min(left);
            taken.push((b, b + n - 1));
            left -= n;
        }
        (left == 0).then_some(RangeSet(taken))
    }

    /// Every integer of the set, in order.
    pub fn iter(&self) -> impl Iterator<Item = u64> + '_ {
        self.0.iter().flat_map(|&(b, e)| b..=e)
    }
}

impl fmt::Display for RangeSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[")?;
        for (i, (b, e)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{b}-{e}")?;
        }
        f.write_str("]")
    }
}

/// A bag of resources. Empty entries are never stored, so two bags that hold
/// the same amounts compare equal.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Resources {
    /// Scalars in thousandths.
    scalars: Scalars,
    ranges: BTreeMap<String, RangeSet>,
    sets: BTreeMap<String, BTreeSet<String>>,
}

fn to_milli(value: f64) -> i64 {
    (value * 1000.0).round() as i64
}

/// Scalars in thousandths, by name. The names nearly every bag holds have
/// fixed slots, so the arithmetic the allocator does per offer (add,
/// subtract, contains, clone) neither allocates nor compares strings; any
/// other name lives in a map that stays empty (and unallocated) otherwise.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Scalars {
    /// Indexed like `WELL_KNOWN`; 0 means absent.
    known: [i64; 4],
    other: BTreeMap<String, i64>,
}

/// Sorted, so iteration merges with `other` in name order.
const WELL_KNOWN: [&str; 4] = ["cpus", "disk", "gpus", "mem"];

fn well_known(name: &str) -> Option<usize> {
    match name {
        "cpus" => Some(0),
        "disk" => Some(1),
        "gpus" => Some(2),
        "mem" => Some(3),
        _ => None,
    }
}

impl Scalars {
    fn get(&self, name: &str) -> i64 {
        match well_known(name) {
            Some(i) => self.known[i],
            None => self.other.get(name).copied().unwrap_or(0),
        }
    }

    /// Adds `milli` (which may be negative) to `name`, flooring at zero
    /// when `floor` and dropping entries that reach zero.
    fn add(&mut self, name: &str, milli: i64, floor: bool) {
        let bound = |v: i64| if floor { v.max(0) } else { v };
        match well_known(name) {
            Some(i) => self.known[i] = bound(self.known[i] + milli),
            None => {
                let entry = self.other.entry(name.to_string()).or_insert(0);
                *entry = bound(*entry + milli);
                if *entry == 0 {
                    self.other.remove(name);
                }
            }
        }
    }

    fn is_empty(&self) -> bool {
        self.known.iter().all(|m| *m == 0) && self.other.is_empty()
    }

    /// Every (name, thousandths) present, in name order.
    fn iter(&self) -> impl Iterator<Item = (&str, i64)> {
        let mut known = WELL_KNOWN
            .iter()
            .zip(self.known)
            .filter(|(_, m)| *m != 0)
            .map(|(n, m)| (*n, m))
            .peekable();
        let mut other = self.other.iter().map(|(n, m)| (n.as_str(), *m)).peekable();
        std::iter::from_fn(move || match (known.peek(), other.peek()) {
            (Some(k), Some(o)) if o.0 < k.0 => other.next(),
            (Some(_), _) => known.next(),
            (None, _) => other.next(),
        })
    }
}

impl Resources {
    /// No resources.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `amount` of scalar `name` (builder style).
    pub fn with_scalar(mut self, name: &str, amount: f64) -> Self {
        self.add_scalar(name, amount);
        self
    }

    /// Adds the ranges of `name` (builder style).
    pub fn with_ranges(mut self, name: &str, ranges: RangeSet) -> Self {
        if !ranges.is_empty() {
            self.ranges
                .entry(name.to_string())
                .or_default()
                .add(&ranges);
        }
        self
    }

    fn add_scalar(&mut self, name: &str, amount: f64) {
        let milli = to_milli(amount);
        if milli == 0 {
            return;
        }
        self.scalars.add(name, milli, false);
    }

    /// The amount of scalar `name` (0 when absent).
    pub fn scalar(&self, name: &str) -> f64 {
        self.scalars.get(name) as f64 / 1000.0
    }

    /// The scalars by name.
    pub fn scalars(&self) -> impl Iterator<Item = (&str, f64)> {
        self.scalars.iter().map(|(n, m)| (n, m as f64 / 1000.0))
    }

    /// Only the scalar part: what sums meaningfully across agents (ports on
    /// two agents are not "twice the ports").
    pub fn scalar_part(&self) -> Resources {
        Resources {
            scalars: self.scalars.clone(),
            ..Resources::default()
        }
    }

    /// The ranges of `name` (empty when absent).
    pub fn ranges(&self, name: &str) -> RangeSet {
        self.ranges.get(name).cloned().unwrap_or_default()
    }

    /// Whether the bag holds nothing.
    pub fn is_empty(&self) -> bool {
        self.scalars.is_empty() && self.ranges.is_empty() && self.sets.is_empty()
    }

    /// Adds `other` into `self`.
    pub fn add(&mut self, other: &Resources) {
        if other.scalars.other.is_empty() {
            for (mine, theirs) in self.scalars.known.iter_mut().zip(other.scalars.known) {
                *mine += theirs;
            }
        } else {
            for (name, milli) in other.scalars.iter() {
                self.scalars.add(name, milli, false);
            }
        }
        for (name, ranges) in &other.ranges {
            self.ranges.entry(name.clone()).or_default().add(ranges);
        }
        for (name, items) in &other.sets {
            self.sets
                .entry(name.clone())
                .or_default()
                .extend(items.iter().cloned());
        }
    }

    /// Whether every resource of `other` is in `self`.
    pub fn contains(&self, other: &Resources) -> bool {
        other.scalars.iter().all(|(n, m)| self.scalars.get(n) >= m)
            && other
                .ranges
                .iter()
                .all(|(n, r)| self.ranges.get(n).is_some_and(|s| s.contains(r)))
            && other
                .sets
                .iter()
                .all(|(n, s)| self.sets.get(n).is_some_and(|mine| s.is_subset(mine)))
    }

    /// Removes `other` from `self`; what `self` lacks is ignored (callers
    /// check `contains` first where it matters).
    pub fn subtract(&mut self, other: &Resources) {
        for (name, milli) in other.scalars.iter() {
            if self.scalars.get(name) > 0 {
                self.scalars.add(name, -milli, true);
            }
        }
        for (name, ranges) in &other.ranges {
            if let Some(mine) = self.ranges.get_mut(name) {
                mine.subtract(ranges);
                if mine.is_empty() {
                    self.ranges.remove(name);
                }
            }
        }
        for (name, items) in &other.sets {
            if let Some(mine) = self.sets.get_mut(name) {
                mine.retain(|i| !items.contains(i));
                if mine.is_empty() {
                    self.sets.remove(name);
                }
            }
        }
    }

    /// `self - other` as a new bag.
    pub fn minus(&self, other: &Resources) -> Resources {
        let mut out = self.clone();
        out.subtract(other);
        out
    }

    /// The names of the scalar resources present.
    pub fn scalar_names(&self) -> impl Iterator<Item = &str> {
        self.scalars.iter().map(|(n, _)| n)
    }

    /// Parses the agent flag form: `cpus:4;mem:8192;ports:[31000-32000];zones:{a,b}`.
    pub fn parse(text: &str) -> Result<Resources, ResourceError> {
        let mut out = Resources::new();
        for item in text.split(';').map(str::trim).filter(|s| !s.is_empty()) {
            let (name, value) = item
                .split_once(':')
                .ok_or_else(|| ResourceError::MissingColon(item.to_string()))?;
            let (name, value) = (name.trim(), value.trim());
            if name.is_empty() {
                return Err(ResourceError::EmptyName);
            }
            if let Some(inner) = value.strip_prefix('[') {
                let inner = inner
                    .strip_suffix(']')
                    .ok_or_else(|| ResourceError::BadRange {
                        name: name.to_string(),
                        range: value.to_string(),
                    })?;
                let mut set = RangeSet::default();
                for part in inner.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                    let bad = || ResourceError::BadRange {
                        name: name.to_string(),
                        range: part.to_string(),
                    };
                    let (b, e) = part.split_once('-').ok_or_else(bad)?;
                    let b: u64 = b.trim().parse().map_err(|_| bad())?;
                    let e: u64 = e.trim().parse().map_err(|_| bad())?;
                    if b > e {
                        return Err(bad());
                    }
                    set.add_range(b, e);
                }
                out = out.with_ranges(name, set);
            } else if let Some(inner) = value.strip_prefix('{') {
                let inner = inner.strip_suffix('}').unwrap_or(inner);
                let items: BTreeSet<String> = inner
                    .split(',')
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty())
                    .collect();
                if !items.is_empty() {
                    out.sets.entry(name.to_string()).or_default().extend(items);
                }
            } else {
                let amount: f64 = value.parse().map_err(|_| ResourceError::NotANumber {
                    name: name.to_string(),
                    value: value.to_string(),
                })?;
                check_scalar(name, amount)?;
                out.add_scalar(name, amount);
            }
        }
        Ok(out)
    }

    /// Converts protocol resources, refusing negative or non-finite scalars
    /// and inverted ranges.
    pub fn from_proto(resources: &[v1::Resource]) -> Result<Resources, ResourceError> {
        let mut out = Resources::new();
        let mut types: BTreeMap<&str, i32> = BTreeMap::new();
        for r in resources {
            if r.name.is_empty() {
                return Err(ResourceError::EmptyName);
            }
            if *types.entry(&r.name).or_insert(r.r#type) != r.r#type {
                return Err(ResourceError::MixedTypes(r.name.clone()));
            }
            match value::Type::try_from(r.r#type).unwrap_or(value::Type::Scalar) {
                value::Type::Scalar => {
                    check_scalar(&r.name, r.scalar)?;
                    out.add_scalar(&r.name, r.scalar);
                }
                value::Type::Ranges => {
                    let mut set = RangeSet::default();
                    for range in &r.ranges {
                        if range.begin > range.end {
                            return Err(ResourceError::BadRange {
                                name: r.name.clone(),
                                range: format!("{}-{}", range.begin, range.end),
                            });
                        }
                        set.add_range(range.begin, range.end);
                    }
                    out = out.with_ranges(&r.name, set);
                }
                value::Type::Set => {
                    if !r.set.is_empty() {
                        out.sets
                            .entry(r.name.clone())
                            .or_default()
                            .extend(r.set.iter().cloned());
                    }
                }
            }
        }
        Ok(out)
    }

    /// The protocol form (unreserved, role `*`).
    pub fn to_proto(&self) -> Vec<v1::Resource> {
        let mut out = Vec::new();
        for (name, amount) in self.scalars() {
            out.push(v1::Resource {
                name: name.to_string(),
                r#type: value::Type::Scalar as i32,
                scalar: amount,
                role: "*".into(),
                ..Default::default()
            });
        }
        for (name, set) in &self.ranges {
            out.push(v1::Resource {
                name: name.clone(),
                r#type: value::Type::Ranges as i32,
                ranges: set
                    .ranges()
                    .iter()
                    .map(|&(begin, end)| value::Range { begin, end })
                    .collect(),
                role: "*".into(),
                ..Default::default()
            });
        }
        for (name, items) in &self.sets {
            out.push(v1::Resource {
                name: name.clone(),
                r#type: value::Type::Set as i32,
                set: items.iter().cloned().collect(),
                role: "*".into(),
                ..Default::default()
            });
        }
        out
    }
}

fn check_scalar(name: &str, amount: f64) -> Result<(), ResourceError> {
    if amount.is_finite() && amount >= 0.0 {
        Ok(())
    } else {
        Err(ResourceError::OutOfRange {
            name: name.to_string(),
            value: amount,
        })
    }
}

impl fmt::Display for Resources {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts: Vec<String> = self.scalars().map(|(n, a)| format!("{n}:{a}")).collect();
        parts.extend(self.ranges.iter().map(|(n, r)| format!("{n}:{r}")));
        parts.extend(self.sets.iter().map(|(n, s)| {
            format!(
                "{n}:{{{}}}",
                s.iter().cloned().collect::<Vec<_>>().join(",")
            )
        }));
        f.write_str(&parts.join(";"))
    }
}

/// JSON form for operator APIs: scalars as numbers, ranges as `"[a-b,…]"`,
/// sets as arrays.
impl Serialize for Resources {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        for (name, amount) in self.scalars() {
            map.serialize_entry(name, &amount)?;
        }
        for (name, ranges) in &self.ranges {
            map.serialize_entry(name, &RangesAsString(ranges))?;
        }
        for (name, items) in &self.sets {
            map.serialize_entry(name, items)?;
        }
        map.end()
    }
}

/// Ranges serialized as their text (`"[31000-32000]"`), written straight
/// into the serializer: every agent and offer in `/state` has ports, and a
/// string made for each was most of their ranges' cost.
struct RangesAsString<'a>(&'a RangeSet);

impl Serialize for RangesAsString<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self.0)
    }
}

impl Resources {
    /// Appends the bag's JSON: the bytes `Serialize` writes (a unit test
    /// holds the two equal), without a serializer. `/state` writes a bag
    /// for every task, three for every agent and one for every offer, and
    /// a scalar's shortest float form is a few digits of its thousandths.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        out.push(b'{');
        let mut first = true;
        let mut key = |out: &mut Vec<u8>, name: &str| {
            if !std::mem::take(&mut first) {
                out.push(b',');
            }
            write_json_str(out, name);
            out.push(b':');
        };
        for (name, milli) in self.scalars.iter() {
            key(out, name);
            write_thousandths(out, milli);
        }
        for (name, ranges) in &self.ranges {
            key(out, name);
            // As `RangeSet`'s `Display`: digits, `-`, `,` and brackets,
            // nothing to escape.
            out.extend_from_slice(b"\"[");
            for (i, (begin, end)) in ranges.0.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_decimal(out, *begin);
                out.push(b'-');
                write_decimal(out, *end);
            }
            out.extend_from_slice(b"]\"");
        }
        for (name, items) in &self.sets {
            key(out, name);
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_json_str(out, item);
            }
            out.push(b']');
        }
        out.push(b'}');
    }
}

/// Appends `s` as a JSON string: as it is when nothing in it needs
/// escaping (resource names nearly always), escaped by serde_json
/// otherwise.
fn write_json_str(out: &mut Vec<u8>, s: &str) {
    if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        serde_json::to_writer(&mut *out, s).expect("a string serializes");
    }
}

/// Appends thousandths as serde_json writes `milli / 1000.0`: its shortest
/// form is the exact decimal (`16384.0`, `0.5`, `0.001`) while the float's
/// step is finer than a thousandth, below a billion; beyond, the float is
/// written by serde_json.
fn write_thousandths(out: &mut Vec<u8>, milli: i64) {
    const EXACT_BELOW: u64 = 1_000_000_000_000;
    let magnitude = milli.unsigned_abs();
    if magnitude >= EXACT_BELOW {
        serde_json::to_writer(&mut *out, &(milli as f64 / 1000.0)).expect("a float serializes");
        return;
    }
    if milli < 0 {
        out.push(b'-');
    }
    write_decimal(out, magnitude / 1000);
    out.push(b'.');
    let fraction = magnitude % 1000;
    if fraction == 0 {
        out.push(b'0');
        return;
    }
    let digits = [fraction / 100, fraction / 10 % 10, fraction % 10];
    let last = if digits[2] != 0 {
        3
    } else if digits[1] != 0 {
        2
    } else {
        1
    };
    out.extend(digits[..last].iter().map(|d| b'0' + *d as u8));
}

/// Appends `n` in decimal.
fn write_decimal(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut start = digits.len();
    loop {
        start -= 1;
        digits[start] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[start..]);
}

/// `count` times the scalars of `each`, exactly (in thousandths).
fn times(each: &Resources, count: u32) -> Resources {
    let mut out = Resources::new();
    for (name, milli) in each.scalars.iter() {
        out.scalars.add(name, milli * i64::from(count), false);
    }
    out
}

/// What a framework still wants placed: the sum of its pending tasks'
/// resources, and how many tasks that is. The allocator's demand policy
/// sizes the framework's offers to it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Demand {
    pub resources: Resources,
    pub tasks: u32,
}

impl Demand {
    /// Nothing to place.
    pub fn is_empty(&self) -> bool {
        self.tasks == 0
    }

    /// Adds `count` tasks of `each`.
    pub fn add(&mut self, each: &Resources, count: u32) {
        self.resources.add(&times(each, count));
        self.tasks += count;
    }

    /// Takes away `count` tasks of `each` (placed, or given up).
    pub fn remove(&mut self, each: &Resources, count: u32) {
        self.resources.subtract(&times(each, count));
        self.tasks = self.tasks.saturating_sub(count);
    }

    pub fn to_proto(&self) -> crate::v1::Demand {
        crate::v1::Demand {
            resources: self.resources.to_proto(),
            tasks: self.tasks,
        }
    }

    /// Refuses what [`Resources::from_proto`] refuses.
    pub fn from_proto(demand: &crate::v1::Demand) -> Result<Demand, ResourceError> {
        Ok(Demand {
            resources: Resources::from_proto(&demand.resources)?,
            tasks: demand.tasks,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resources_hand_written_json_is_what_serde_writes() {
        let bags = [
            "",
            "cpus:8;mem:16384;disk:100000;ports:[31000-32000]",
            "cpus:0.001;mem:0.01;gpus:0.1;disk:1.5",
            "cpus:7.999;mem:123456789.123;ports:[1-1,3-5,31000-32000];zones:{a,b}",
            "cpus:999999999.999;mem:1000000000;disk:12345678901234",
            "weird\"name:2;tab\tname:[1-2];labels:{x\"y,é ✓,a\\b}",
        ];
        for spec in bags {
            let bag = Resources::parse(spec).unwrap_or_else(|e| panic!("{spec}: {e}"));
            let mut written = Vec::new();
            bag.write_json(&mut written);
            let written = String::from_utf8(written).expect("UTF-8");
            assert_eq!(
                written,
                serde_json::to_string(&bag).expect("serde"),
                "{spec}"
            );
        }
    }

    proptest::proptest! {
        #[test]
        fn any_scalar_is_written_as_serde_writes_it(milli in -10_000_000_000_000i64..10_000_000_000_000) {
            let mut bag = Resources::new();
            bag.scalars.add("cpus", milli, false);
            bag.scalars.add("custom", milli / 7, false);
            let mut written = Vec::new();
            bag.write_json(&mut written);
            proptest::prop_assert_eq!(
                String::from_utf8(written).expect("UTF-8"),
                serde_json::to_string(&bag).expect("serde")
            );
        }
    }

    #[test]
    fn resources_serialize_as_scalars_range_text_and_set_items() {
        let r = Resources::parse(
            "cpus:0.5;mem:1;ports:[31000-31002,31005-31005];labels:[1-1];zones:{b,a}",
        )
        .expect("valid");
        assert_eq!(
            serde_json::to_string(&r).expect("serializes"),
            r#"{"cpus":0.5,"mem":1.0,"labels":"[1-1]","ports":"[31000-31002,31005-31005]","zones":["a","b"]}"#
        );
        assert_eq!(
            serde_json::to_string(&Resources::new()).expect("serializes"),
            "{}"
        );
    }

    #[test]
    fn demand_adds_and_removes_tasks_exactly() {
        let task = Resources::parse("cpus:0.1;mem:32;ports:[31000-31001]").expect("valid");
        let mut d = Demand::default();
        d.add(&task, 3);
        assert_eq!(d.tasks, 3);
        assert_eq!(d.resources.scalar("cpus"), 0.3);
        assert_eq!(d.resources.scalar("mem"), 96.0);
        assert!(
            d.resources.ranges("ports").is_empty(),
            "only scalars add up"
        );
        d.remove(&task, 2);
        assert_eq!((d.tasks, d.resources.scalar("cpus")), (1, 0.1));
        d.remove(&task, 5);
        assert!(d.is_empty());
        assert!(d.resources.is_empty());
    }

    #[test]
    fn well_known_and_other_scalars_mix_in_name_order() {
        let r = Resources::parse("mem:2;zz:1;cpus:1;bandwidth:5;gpus:1;foo:3").expect("valid");
        let names: Vec<&str> = r.scalar_names().collect();
        assert_eq!(names, ["bandwidth", "cpus", "foo", "gpus", "mem", "zz"]);
        assert_eq!(r.to_string(), "bandwidth:5;cpus:1;foo:3;gpus:1;mem:2;zz:1");
        // Taking everything back out leaves a bag equal to an empty one.
        let mut left = r.clone();
        left.subtract(&r);
        assert!(left.is_empty());
        assert_eq!(left, Resources::new());
        let mut twice = r.clone();
        twice.add(&r);
        assert_eq!(twice.scalar("foo"), 6.0);
        assert_eq!(twice.scalar("cpus"), 2.0);
        assert!(twice.contains(&r) && !r.contains(&twice));
    }

    #[test]
    fn parses_the_agent_flag_form() {
        let r = Resources::parse("cpus:4;mem:8192; disk:20000;ports:[31000-32000,33000-33001]")
            .expect("valid");
        assert_eq!(r.scalar("cpus"), 4.0);
        assert_eq!(r.scalar("mem"), 8192.0);
        assert_eq!(r.ranges("ports").len(), 1003);
        assert_eq!(
            r.to_string(),
            "cpus:4;disk:20000;mem:8192;ports:[31000-32000,33000-33001]"
        );
    }

    #[test]
    fn parse_errors_name_the_resource() {
        assert_eq!(
            Resources::parse("cpus:lots"),
            Err(ResourceError::NotANumber {
                name: "cpus".into(),
                value: "lots".into()
            })
        );
        assert!(matches!(
            Resources::parse("mem:-1"),
            Err(ResourceError::OutOfRange { .. })
        ));
        assert!(matches!(
            Resources::parse("ports:[5-1]"),
            Err(ResourceError::BadRange { .. })
        ));
        assert!(matches!(
            Resources::parse("cpus"),
            Err(ResourceError::MissingColon(_))
        ));
    }

    #[test]
    fn arithmetic_is_exact_for_tenths() {
        let total = Resources::new().with_scalar("cpus", 1.0);
        let tenth = Resources::new().with_scalar("cpus", 0.1);
        let mut left = total.clone();
        for _ in 0..10 {
            assert!(left.contains(&tenth));
            left.subtract(&tenth);
        }
        assert!(left.is_empty());
        for _ in 0..10 {
            left.add(&tenth);
        }
        assert_eq!(left, total);
    }

    #[test]
    fn ranges_subtract_and_contain() {
        let all = Resources::parse("ports:[31000-31009]").expect("valid");
        let some = Resources::parse("ports:[31002-31003]").expect("valid");
        assert!(all.contains(&some));
        let rest = all.minus(&some);
        assert_eq!(
            rest.ranges("ports").to_string(),
            "[31000-31001,31004-31009]"
        );
        assert!(!rest.contains(&some));
        assert_eq!(
            rest.ranges("ports").take_first(3).map(|r| r.to_string()),
            Some("[31000-31001,31004-31004]".to_string())
        );
    }

    #[test]
    fn proto_round_trip_and_validation() {
        let r = Resources::parse("cpus:0.5;mem:32;ports:[1-2];zones:{a,b}").expect("valid");
        assert_eq!(Resources::from_proto(&r.to_proto()), Ok(r));
        let bad = vec![v1::Resource {
            name: "cpus".into(),
            scalar: f64::NAN,
            ..Default::default()
        }];
        assert!(matches!(
            Resources::from_proto(&bad),
            Err(ResourceError::OutOfRange { .. })
        ));
    }
}
