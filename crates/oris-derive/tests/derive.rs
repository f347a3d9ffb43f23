//! `#[derive(State)]` end to end, against `oris-core`.
#![deny(missing_docs, unused, missing_debug_implementations)]

use std::collections::BTreeMap;

use oris_core::state::{FieldInfo, ReduceError, ReducerKind, State};
use oris_derive::State;
use serde::{Deserialize, Serialize};
use serde_json::json;

fn add_i64(current: &mut i64, update: i64) {
    *current += update;
}

mod reducers {
    pub fn max(current: &mut u32, update: u32) {
        *current = (*current).max(update);
    }
}

/// The example state of the brief.
#[derive(Clone, Default, Debug, Serialize, Deserialize, State)]
#[oris(crate = "::oris_core")]
pub struct Research {
    /// The research topic.
    pub topic: String,
    #[reducer(append)]
    /// Findings, in order.
    pub notes: Vec<String>,
    #[reducer(merge)]
    /// Scores by source.
    pub scores: BTreeMap<String, f64>,
    #[reducer(custom = add_i64)]
    /// A running sum.
    pub total: i64,
    #[reducer(custom = "reducers::max")]
    /// The largest value seen.
    pub peak: u32,
    #[reducer(last_value)]
    /// Whether the research is finished.
    pub done: Option<bool>,
}

fn json<T: Serialize>(value: &T) -> serde_json::Value {
    serde_json::to_value(value).unwrap()
}

#[test]
fn last_value_replaces() {
    let mut s = Research {
        topic: "old".into(),
        ..Default::default()
    };
    s.apply(vec![("a", ResearchUpdate::default().topic("new"))])
        .unwrap();
    assert_eq!(s.topic, "new");
    // A field nobody writes keeps its value.
    s.apply(vec![("a", ResearchUpdate::default().total(1))])
        .unwrap();
    assert_eq!(s.topic, "new");
}

#[test]
fn two_writers_of_a_last_value_field_conflict_and_change_nothing() {
    let mut s = Research {
        topic: "t".into(),
        notes: vec!["n0".into()],
        total: 5,
        ..Default::default()
    };
    let before = json(&s);
    let err = s
        .apply(vec![
            (
                "first",
                ResearchUpdate::default()
                    .notes(vec!["n1".to_owned()])
                    .total(1),
            ),
            ("a", ResearchUpdate::default().topic("x")),
            ("b", ResearchUpdate::default().done(true)),
            ("c", ResearchUpdate::default().topic("y")),
        ])
        .unwrap_err();
    assert_eq!(
        err,
        ReduceError::ConflictingWrites {
            field: "topic",
            first: "a".into(),
            second: "c".into(),
        }
    );
    assert_eq!(json(&s), before);
}

#[test]
fn append_follows_the_order_of_the_updates() {
    let mut s = Research {
        notes: vec!["0".into()],
        ..Default::default()
    };
    s.apply(vec![
        ("b", ResearchUpdate::default().notes(vec!["1".to_owned()])),
        (
            "a",
            ResearchUpdate::default().notes(vec!["2".to_owned(), "3".to_owned()]),
        ),
        ("c", ResearchUpdate::default()),
        ("a", ResearchUpdate::default().notes(vec!["4".to_owned()])),
    ])
    .unwrap();
    assert_eq!(s.notes, ["0", "1", "2", "3", "4"]);
}

#[test]
fn merge_inserts_and_replaces_keys() {
    let mut s = Research {
        scores: BTreeMap::from([("a".into(), 1.0), ("b".into(), 2.0)]),
        ..Default::default()
    };
    s.apply(vec![
        (
            "x",
            ResearchUpdate::default().scores(BTreeMap::from([("b".to_owned(), 3.0)])),
        ),
        (
            "y",
            ResearchUpdate::default().scores(BTreeMap::from([
                ("b".to_owned(), 4.0),
                ("c".to_owned(), 5.0),
            ])),
        ),
    ])
    .unwrap();
    assert_eq!(
        s.scores,
        BTreeMap::from([("a".into(), 1.0), ("b".into(), 4.0), ("c".into(), 5.0)])
    );
}

#[test]
fn custom_reducers_by_path_and_by_string() {
    let mut s = Research {
        total: 10,
        peak: 3,
        ..Default::default()
    };
    s.apply(vec![
        ("x", ResearchUpdate::default().total(1).peak(7_u32)),
        ("y", ResearchUpdate::default().total(2).peak(5_u32)),
        ("z", ResearchUpdate::default().total(-4)),
    ])
    .unwrap();
    assert_eq!(s.total, 9);
    assert_eq!(s.peak, 7);
}

#[test]
fn into_update_round_trips() {
    let s = Research {
        topic: "t".into(),
        notes: vec!["a".into(), "b".into()],
        scores: BTreeMap::from([("k".into(), 0.5)]),
        total: 42,
        peak: 9,
        done: Some(false),
    };
    let mut fresh = Research::default();
    fresh
        .apply(vec![("__input__", s.clone().into_update())])
        .unwrap();
    assert_eq!(json(&fresh), json(&s));
}

#[test]
fn update_json_omits_unset_fields_and_round_trips() {
    assert_eq!(
        serde_json::to_string(&ResearchUpdate::default().topic("x")).unwrap(),
        r#"{"topic":"x"}"#
    );
    assert_eq!(
        serde_json::to_string(&ResearchUpdate::default()).unwrap(),
        "{}"
    );
    let update = ResearchUpdate::default()
        .notes(vec!["n".to_owned()])
        .total(3);
    let back: ResearchUpdate =
        serde_json::from_str(&serde_json::to_string(&update).unwrap()).unwrap();
    assert_eq!(back.notes, Some(vec!["n".to_owned()]));
    assert_eq!(back.total, Some(3));
    assert_eq!(back.topic, None);
}

#[test]
fn writing_none_to_an_option_field_survives_json() {
    // `Some(None)` ("clear the field") must not turn into `None` ("not written").
    let update = ResearchUpdate {
        done: Some(None),
        ..Default::default()
    };
    let text = serde_json::to_string(&update).unwrap();
    assert_eq!(text, r#"{"done":null}"#);
    let back: ResearchUpdate = serde_json::from_str(&text).unwrap();
    assert_eq!(back.done, Some(None));

    let mut s = Research {
        done: Some(true),
        ..Default::default()
    };
    s.apply(vec![("n", back)]).unwrap();
    assert_eq!(s.done, None);
}

#[test]
fn fields_lists_names_and_reducers() {
    let names: Vec<_> = Research::fields()
        .iter()
        .map(|f| (f.name, f.reducer))
        .collect();
    assert_eq!(
        names,
        [
            ("topic", ReducerKind::LastValue),
            ("notes", ReducerKind::Append),
            ("scores", ReducerKind::Merge),
            ("total", ReducerKind::Custom),
            ("peak", ReducerKind::Custom),
            ("done", ReducerKind::LastValue),
        ]
    );
}

/// serde renames on the state carry over to the update and to `fields()`.
#[derive(Clone, Default, Debug, Serialize, Deserialize, State)]
#[oris(crate = "::oris_core")]
#[serde(rename_all = "camelCase")]
#[state(update = "Renamed")]
struct Camel {
    user_name: String,
    #[serde(rename = "ID")]
    user_id: u64,
    #[serde(alias = "oldList")]
    #[reducer(append)]
    item_list: Vec<u8>,
    #[serde(rename(serialize = "outName"))]
    in_out: bool,
}

#[test]
fn serde_renames_carry_over() {
    let s = Camel {
        user_name: "ann".into(),
        user_id: 7,
        item_list: vec![1],
        in_out: true,
    };
    let state_json = json(&s);
    let update_json = json(&s.clone().into_update());
    assert_eq!(update_json, state_json);
    assert_eq!(
        state_json,
        json!({"userName": "ann", "ID": 7, "itemList": [1], "outName": true})
    );

    // Deserializing uses the deserialize-side names and aliases, as the state does.
    let update: Renamed =
        serde_json::from_value(json!({"userName": "bob", "ID": 8, "oldList": [2], "inOut": false}))
            .unwrap();
    let mut s2 = s.clone();
    s2.apply(vec![("n", update)]).unwrap();
    assert_eq!(
        (s2.user_name.as_str(), s2.user_id, s2.item_list, s2.in_out),
        ("bob", 8, vec![1, 2], false)
    );

    let names: Vec<_> = Camel::fields().iter().map(|f| f.name).collect();
    assert_eq!(names, ["userName", "ID", "itemList", "outName"]);

    // Conflicts are reported under the serialized name.
    let err = Camel::default()
        .apply(vec![
            ("a", Renamed::default().user_name("x")),
            ("b", Renamed::default().user_name("y")),
        ])
        .unwrap_err();
    assert!(matches!(
        err,
        ReduceError::ConflictingWrites {
            field: "userName",
            ..
        }
    ));
}

#[derive(Clone, Default, Debug, Serialize, Deserialize, State)]
#[oris(crate = ::oris_core)]
#[serde(rename_all = "SCREAMING-KEBAB-CASE")]
pub(crate) struct Kebab {
    first_field: i32,
    #[reducer(append)]
    r#type: String,
    r#fn: u8,
}

#[test]
fn raw_identifiers_and_rename_all_rules() {
    let mut s = Kebab::default();
    s.apply(vec![
        ("a", KebabUpdate::default().first_field(1).r#type("x")),
        ("b", KebabUpdate::default().r#type("y").r#fn(2_u8)),
    ])
    .unwrap();
    assert_eq!((s.first_field, s.r#type.as_str(), s.r#fn), (1, "xy", 2));
    assert_eq!(json(&s), json!({"FIRST-FIELD": 1, "TYPE": "xy", "FN": 2}));
    assert_eq!(json(&s.clone().into_update()), json(&s));
    assert_eq!(
        Kebab::fields(),
        [
            FieldInfo {
                name: "FIRST-FIELD",
                reducer: ReducerKind::LastValue
            },
            FieldInfo {
                name: "TYPE",
                reducer: ReducerKind::Append
            },
            FieldInfo {
                name: "FN",
                reducer: ReducerKind::LastValue
            },
        ]
    );
}

#[allow(clippy::unnecessary_wraps)]
fn seven() -> Option<u32> {
    Some(7)
}

#[derive(Clone, Default, Debug, Serialize, Deserialize, State)]
#[oris(crate = "::oris_core")]
struct WithDefaults {
    #[serde(default)]
    a: String,
    #[serde(default = "seven", skip_serializing_if = "Option::is_none")]
    b: Option<u32>,
    #[serde(default)]
    #[reducer(merge)]
    m: BTreeMap<String, serde_json::Value>,
}

#[test]
fn serde_default_fields_still_work() {
    let mut s: WithDefaults = serde_json::from_str("{}").unwrap();
    assert_eq!((s.a.as_str(), s.b), ("", Some(7)));
    s.apply(vec![(
        "n",
        WithDefaultsUpdate::default()
            .a("hi")
            .b(3)
            .m(BTreeMap::from([("k".to_owned(), serde_json::Value::Null)])),
    )])
    .unwrap();
    assert_eq!(json(&s), json!({"a": "hi", "b": 3, "m": {"k": null}}));
    let update: WithDefaultsUpdate = serde_json::from_str(r#"{"b": 4}"#).unwrap();
    assert_eq!(update.b, Some(Some(4)));
    assert!(update.a.is_none());
}

#[derive(Clone, Default, Debug, Serialize, Deserialize, State)]
#[oris(crate = "::oris_core")]
struct Empty {}

#[test]
fn empty_state() {
    let mut s = Empty::default();
    s.apply(vec![("a", EmptyUpdate::default())]).unwrap();
    assert!(Empty::fields().is_empty());
    let _ = s.into_update();
}
