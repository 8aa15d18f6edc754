//! How etcd 3.4/3.5 records its members: in the v2 store inside every snap
//! file, in the context of every membership conf change in the WAL, and
//! (3.4 and later) in the backend's `members` bucket.
//!
//! - v2 store (`v2store.Save()` JSON): `Root.Children["0"].Children
//!   ["members"].Children[<hex id>].Children` holds `raftAttributes`
//!   (`{"peerURLs":[…],"isLearner":true}`) and `attributes`
//!   (`{"name":…,"clientURLs":[…]}`), each as a JSON string in `Value`;
//!   removed members are the keys of `…["0"].Children["removed_members"]
//!   .Children`.
//! - conf change context and `members` bucket: the JSON of `membership.
//!   Member`, `{"id":<decimal>,"peerURLs":[…],"isLearner"?,"name"?,
//!   "clientURLs"?}`.
//! - `raftpb.ConfChange{ID=1, Type=2, NodeID=3, Context=4}`, with etcd's
//!   type numbers (add 0, remove 1, update 2, add learner 3).

use prost::Message;
use serde::Deserialize;
use serde_json::Value;

/// A member as etcd records it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct EtcdMember {
    /// Member ID.
    #[serde(default)]
    pub id: u64,
    /// Peer URLs.
    #[serde(rename = "peerURLs", default)]
    pub peer_urls: Vec<String>,
    /// Whether it is a learner.
    #[serde(rename = "isLearner", default)]
    pub is_learner: bool,
    /// Its name, once published.
    #[serde(default)]
    pub name: String,
    /// Its client URLs, once published.
    #[serde(rename = "clientURLs", default)]
    pub client_urls: Vec<String>,
}

impl EtcdMember {
    /// Decodes a conf change context or a `members` bucket value.
    ///
    /// # Errors
    /// The JSON error.
    pub fn from_json(b: &[u8]) -> Result<EtcdMember, serde_json::Error> {
        // Go's decoder takes only an object for a struct; serde would also
        // take an array of the fields in order.
        if b.iter().find(|c| !c.is_ascii_whitespace()) != Some(&b'{') {
            return Err(serde::de::Error::custom("a member is a JSON object"));
        }
        serde_json::from_slice(b)
    }
}

/// The members the v2 store of a snap file holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct V2Cluster {
    /// Members, sorted by ID.
    pub members: Vec<EtcdMember>,
    /// IDs of removed members, sorted.
    pub removed: Vec<u64>,
}

/// Why a v2 store could not be read.
#[derive(Debug, thiserror::Error)]
#[error("v2 store: {0}")]
pub struct V2StoreError(String);

#[derive(Deserialize)]
struct RaftAttributes {
    #[serde(rename = "peerURLs", default)]
    peer_urls: Vec<String>,
    #[serde(rename = "isLearner", default)]
    is_learner: bool,
}

#[derive(Deserialize)]
struct Attributes {
    #[serde(default)]
    name: String,
    #[serde(rename = "clientURLs", default)]
    client_urls: Vec<String>,
}

fn children<'a>(node: &'a Value, name: &str) -> Option<&'a serde_json::Map<String, Value>> {
    node.get("Children")?
        .get(name)?
        .get("Children")?
        .as_object()
}

impl V2Cluster {
    /// Reads the members out of a v2 store's JSON.
    ///
    /// # Errors
    /// [`V2StoreError`] if it is not JSON, or a member's ID or attributes
    /// do not decode. A store without members (none added yet) is empty,
    /// not an error.
    pub fn from_store_json(json: &[u8]) -> Result<V2Cluster, V2StoreError> {
        let v: Value = serde_json::from_slice(json).map_err(|e| V2StoreError(e.to_string()))?;
        let Some(zero) = v.get("Root").and_then(|r| r.get("Children")?.get("0")) else {
            return Ok(V2Cluster::default());
        };
        let hex = |s: &str| {
            u64::from_str_radix(s, 16).map_err(|e| V2StoreError(format!("member id {s:?}: {e}")))
        };
        let value = |node: &Value, field: &str| -> Option<String> {
            node.get("Children")?
                .get(field)?
                .get("Value")?
                .as_str()
                .map(str::to_string)
        };
        let mut out = V2Cluster::default();
        for (id, node) in children(zero, "members").into_iter().flatten() {
            let mut m = EtcdMember {
                id: hex(id)?,
                ..EtcdMember::default()
            };
            if let Some(raw) = value(node, "raftAttributes") {
                let r: RaftAttributes = serde_json::from_str(&raw)
                    .map_err(|e| V2StoreError(format!("member {id} raftAttributes: {e}")))?;
                m.peer_urls = r.peer_urls;
                m.is_learner = r.is_learner;
            }
            if let Some(raw) = value(node, "attributes") {
                let a: Attributes = serde_json::from_str(&raw)
                    .map_err(|e| V2StoreError(format!("member {id} attributes: {e}")))?;
                m.name = a.name;
                m.client_urls = a.client_urls;
            }
            out.members.push(m);
        }
        for id in children(zero, "removed_members")
            .into_iter()
            .flatten()
            .map(|(k, _)| k)
        {
            out.removed.push(hex(id)?);
        }
        out.members.sort_by_key(|m| m.id);
        out.removed.sort_unstable();
        Ok(out)
    }
}

/// The JSON of a v2 store as etcd 3.4's `v2store.Save` writes it, holding
/// only what etcd keeps there in v3 mode: the members (`raftAttributes`
/// and, once published, `attributes`), the removed members, and the
/// cluster version. The watcher history has etcd's capacity (1000), which
/// etcd needs to record the v2 requests it applies after loading it.
pub fn v2_store_json(members: &[EtcdMember], removed: &[u64], cluster_version: &str) -> Vec<u8> {
    fn node(
        path: &str,
        value: Option<String>,
        children: Option<serde_json::Map<String, Value>>,
    ) -> Value {
        serde_json::json!({
            "Path": path,
            "CreatedIndex": 0,
            "ModifiedIndex": 0,
            "ExpireTime": "0001-01-01T00:00:00Z",
            "Value": value.unwrap_or_default(),
            "Children": children.map_or(Value::Null, Value::Object),
        })
    }
    let mut member_nodes = serde_json::Map::new();
    for m in members {
        let base = format!("/0/members/{:x}", m.id);
        let mut raft = serde_json::json!({ "peerURLs": m.peer_urls });
        if m.is_learner {
            raft["isLearner"] = true.into();
        }
        let mut kids = serde_json::Map::new();
        kids.insert(
            "raftAttributes".into(),
            node(
                &format!("{base}/raftAttributes"),
                Some(raft.to_string()),
                None,
            ),
        );
        if !m.name.is_empty() || !m.client_urls.is_empty() {
            let mut attrs = serde_json::Map::new();
            if !m.name.is_empty() {
                attrs.insert("name".into(), m.name.clone().into());
            }
            if !m.client_urls.is_empty() {
                attrs.insert("clientURLs".into(), m.client_urls.clone().into());
            }
            kids.insert(
                "attributes".into(),
                node(
                    &format!("{base}/attributes"),
                    Some(Value::Object(attrs).to_string()),
                    None,
                ),
            );
        }
        member_nodes.insert(format!("{:x}", m.id), node(&base, None, Some(kids)));
    }
    let mut zero = serde_json::Map::new();
    zero.insert(
        "members".into(),
        node("/0/members", None, Some(member_nodes)),
    );
    if !removed.is_empty() {
        let gone = removed
            .iter()
            .map(|id| {
                (
                    format!("{id:x}"),
                    node(
                        &format!("/0/removed_members/{id:x}"),
                        Some(String::new()),
                        None,
                    ),
                )
            })
            .collect();
        zero.insert(
            "removed_members".into(),
            node("/0/removed_members", None, Some(gone)),
        );
    }
    zero.insert(
        "version".into(),
        node("/0/version", Some(cluster_version.to_string()), None),
    );
    let mut root = serde_json::Map::new();
    root.insert("0".into(), node("/0", None, Some(zero)));
    root.insert("1".into(), node("/1", None, Some(serde_json::Map::new())));
    let store = serde_json::json!({
        "Root": node("/", None, Some(root)),
        "WatcherHub": {
            "EventHistory": {
                "Queue": {
                    "Events": vec![Value::Null; 1000],
                    "Size": 0,
                    "Front": 0,
                    "Back": 0,
                    "Capacity": 1000,
                },
                "StartIndex": 0,
                "LastIndex": 0,
            }
        },
        "CurrentIndex": 0,
        "Stats": {},
        "CurrentVersion": 2,
    });
    store.to_string().into_bytes()
}

/// etcd's conf change types (`raftpb.ConfChangeType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfChangeKind {
    /// `ConfChangeAddNode` (0): add a voter, or promote a learner.
    AddNode,
    /// `ConfChangeRemoveNode` (1).
    RemoveNode,
    /// `ConfChangeUpdateNode` (2): new peer URLs for a member.
    UpdateNode,
    /// `ConfChangeAddLearnerNode` (3).
    AddLearnerNode,
}

/// `raftpb.ConfChange` as etcd encodes it.
#[derive(Clone, PartialEq, Message)]
pub struct ConfChange {
    /// The proposer's request ID.
    #[prost(uint64, tag = "1")]
    pub id: u64,
    /// The type number; see [`ConfChange::kind`].
    #[prost(int32, tag = "2")]
    pub change_type: i32,
    /// The member.
    #[prost(uint64, tag = "3")]
    pub node_id: u64,
    /// The member's JSON ([`EtcdMember`]), empty for a removal.
    #[prost(bytes = "vec", tag = "4")]
    pub context: Vec<u8>,
}

impl ConfChange {
    /// The change's type, `None` for a number etcd does not define.
    pub fn kind(&self) -> Option<ConfChangeKind> {
        Some(match self.change_type {
            0 => ConfChangeKind::AddNode,
            1 => ConfChangeKind::RemoveNode,
            2 => ConfChangeKind::UpdateNode,
            3 => ConfChangeKind::AddLearnerNode,
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::damage::{damaged, damages};
    use proptest::prelude::*;

    /// Shaped as the v2 store in the snap file of a real etcd 3.4 member.
    const STORE: &str = r#"{"Root":{"Path":"/","Value":"","Children":{"0":{"Path":"/0","Children":{
        "members":{"Path":"/0/members","Children":{
          "667880157b8812c8":{"Path":"/0/members/667880157b8812c8","Children":{
            "attributes":{"Value":"{\"name\":\"s1\",\"clientURLs\":[\"http://127.0.0.1:42379\"]}","Children":null},
            "raftAttributes":{"Value":"{\"peerURLs\":[\"http://127.0.0.1:42380\"]}","Children":null}}},
          "12":{"Children":{"raftAttributes":{"Value":"{\"peerURLs\":[\"http://127.0.0.1:5\"],\"isLearner\":true}"}}}}},
        "removed_members":{"Children":{"ab":{"Value":""}}},
        "version":{"Path":"/0/version","Value":"3.4.0","Children":null}}},
      "1":{"Path":"/1","Children":{}}}},"WatcherHub":{},"CurrentIndex":3}"#;

    #[test]
    fn members_from_a_v2_store() {
        let c = V2Cluster::from_store_json(STORE.as_bytes()).unwrap();
        assert_eq!(c.removed, vec![0xab]);
        assert_eq!(c.members.len(), 2);
        assert_eq!(c.members[0].id, 0x12);
        assert!(c.members[0].is_learner);
        assert_eq!(c.members[0].name, "");
        let s1 = &c.members[1];
        assert_eq!(s1.id, 0x6678_8015_7b88_12c8);
        assert_eq!(s1.name, "s1");
        assert_eq!(s1.peer_urls, vec!["http://127.0.0.1:42380"]);
        assert_eq!(s1.client_urls, vec!["http://127.0.0.1:42379"]);
        assert!(V2Cluster::from_store_json(b"{\"Root\":{}}")
            .unwrap()
            .members
            .is_empty());
        assert!(V2Cluster::from_store_json(b"not json").is_err());
    }

    #[test]
    fn conf_change_context_as_etcd_writes_it() {
        let m = EtcdMember::from_json(
            br#"{"id":7383792418829112008,"peerURLs":["http://127.0.0.1:42380"],"name":"s1"}"#,
        )
        .unwrap();
        assert_eq!(m.id, 0x6678_8015_7b88_12c8);
        assert!(!m.is_learner);
        let cc = ConfChange {
            change_type: 3,
            ..ConfChange::default()
        };
        assert_eq!(cc.kind(), Some(ConfChangeKind::AddLearnerNode));
        assert_eq!(
            ConfChange {
                change_type: 9,
                ..cc
            }
            .kind(),
            None
        );
    }

    #[test]
    fn a_written_v2_store_reads_back() {
        let members = vec![
            EtcdMember {
                id: 0x12,
                peer_urls: vec!["http://a:1".into()],
                is_learner: true,
                ..EtcdMember::default()
            },
            EtcdMember {
                id: 0x34,
                peer_urls: vec!["http://b:1".into()],
                name: "b".into(),
                client_urls: vec!["http://b:2".into()],
                ..EtcdMember::default()
            },
        ];
        let json = v2_store_json(&members, &[0x99], "3.4.0");
        let back = V2Cluster::from_store_json(&json).unwrap();
        assert_eq!(back.members, members);
        assert_eq!(back.removed, vec![0x99]);
    }

    /// Any JSON value, a few levels deep.
    fn json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<f64>().prop_map(Value::from),
            "[0-9a-fA-Z\\\"{}:]{0,12}".prop_map(Value::from),
        ];
        leaf.prop_recursive(4, 32, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
                prop::collection::btree_map(
                    prop_oneof![
                        Just("Root".to_string()),
                        Just("Children".to_string()),
                        Just("0".to_string()),
                        Just("members".to_string()),
                        Just("removed_members".to_string()),
                        Just("raftAttributes".to_string()),
                        Just("attributes".to_string()),
                        Just("Value".to_string()),
                        "[0-9a-f]{1,18}",
                    ],
                    inner,
                    0..4
                )
                .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    fn member() -> impl Strategy<Value = EtcdMember> {
        (
            any::<u64>(),
            prop::collection::vec("[a-z:/.0-9]{0,12}", 0..3),
            any::<bool>(),
            "[a-z0-9]{0,6}",
            prop::collection::vec("[a-z:/.0-9]{0,12}", 0..3),
        )
            .prop_map(
                |(id, peer_urls, is_learner, name, client_urls)| EtcdMember {
                    id,
                    peer_urls,
                    is_learner,
                    name,
                    client_urls,
                },
            )
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        /// Bytes from a snap file or a WAL entry, whatever they are:
        /// decoded or a typed error.
        #[test]
        fn arbitrary_bytes_decode_or_fail(raw in prop::collection::vec(any::<u8>(), 0..256)) {
            let _ = V2Cluster::from_store_json(&raw);
            let _ = EtcdMember::from_json(&raw);
            if let Ok(cc) = ConfChange::decode(raw.as_slice()) {
                let _ = cc.kind();
            }
        }

        /// Any JSON shape where the members are looked for.
        #[test]
        fn arbitrary_json_decodes_or_fails(root in json(), zero in json(), members in json()) {
            let mut store = serde_json::json!({ "Root": root });
            let _ = V2Cluster::from_store_json(store.to_string().as_bytes());
            store = serde_json::json!({
                "Root": { "Children": { "0": { "Children": {
                    "members": { "Children": members },
                    "removed_members": { "Children": zero },
                } } } }
            });
            let _ = V2Cluster::from_store_json(store.to_string().as_bytes());
        }

        /// A store as etcd writes it reads back; damaged, it is read or
        /// refused.
        #[test]
        fn damaged_stores_decode_or_fail(
            members in prop::collection::vec(member(), 0..4),
            removed in prop::collection::vec(any::<u64>(), 0..3),
            damage in damages(4),
        ) {
            let json = v2_store_json(&members, &removed, "3.4.0");
            let back = V2Cluster::from_store_json(&json).unwrap();
            prop_assert_eq!(back.members.len(), members.iter().map(|m| m.id).collect::<std::collections::BTreeSet<_>>().len());
            let _ = V2Cluster::from_store_json(&damaged(json, &damage));
        }

        /// Nesting far past any real store is refused, not a stack overflow.
        #[test]
        fn deep_nesting_is_refused(depth in 1usize..20_000) {
            let json = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
            let r = V2Cluster::from_store_json(json.as_bytes());
            prop_assert!(r.is_ok() || depth > 100);
            prop_assert!(EtcdMember::from_json(json.as_bytes()).is_err());
        }
    }
}
