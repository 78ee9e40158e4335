//! `StringMap`: a job's small string-to-string maps (`parameters`, `tags`) as one sorted
//! slice. It reads, writes and validates as a JSON object, like a `BTreeMap`, but a job
//! holding one entry keeps 48 bytes on the heap instead of a B-tree node of about 540: over
//! 100,000 held jobs that is the difference between meeting the memory target and not.

use std::borrow::Cow;
use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StringMap(Box<[(String, String)]>);

impl StringMap {
    pub fn get(&self, key: &str) -> Option<&String> {
        self.0.binary_search_by(|(k, _)| k.as_str().cmp(key)).ok().map(|i| &self.0[i].1)
    }

    /// In key order.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &String)> {
        self.0.iter().map(|(k, v)| (k, v))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }
}

impl FromIterator<(String, String)> for StringMap {
    /// A later value for a key replaces an earlier one, as inserting into a map does.
    fn from_iter<I: IntoIterator<Item = (String, String)>>(iter: I) -> Self {
        let map: BTreeMap<String, String> = iter.into_iter().collect();
        map.into()
    }
}

impl From<BTreeMap<String, String>> for StringMap {
    fn from(map: BTreeMap<String, String>) -> Self {
        StringMap(map.into_iter().collect())
    }
}

impl<'a> IntoIterator for &'a StringMap {
    type Item = (&'a String, &'a String);
    type IntoIter = std::iter::Map<
        std::slice::Iter<'a, (String, String)>,
        fn(&'a (String, String)) -> (&'a String, &'a String),
    >;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter().map(|(k, v)| (k, v))
    }
}

impl Serialize for StringMap {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.iter())
    }
}

impl<'de> Deserialize<'de> for StringMap {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        BTreeMap::<String, String>::deserialize(d).map(StringMap::from)
    }
}

impl JsonSchema for StringMap {
    fn schema_name() -> Cow<'static, str> {
        BTreeMap::<String, String>::schema_name()
    }

    fn inline_schema() -> bool {
        BTreeMap::<String, String>::inline_schema()
    }

    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        BTreeMap::<String, String>::json_schema(generator)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_and_writes_as_an_object_with_map_lookups() {
        let m: StringMap = serde_json::from_str(r#"{"b": "2", "a": "1"}"#).unwrap();
        assert_eq!(m.get("a").map(String::as_str), Some("1"));
        assert_eq!(m.get("c"), None);
        assert_eq!(serde_json::to_string(&m).unwrap(), r#"{"a":"1","b":"2"}"#);
        let later: StringMap = [("k".to_string(), "old".to_string()), ("k".to_string(), "new".to_string())]
            .into_iter()
            .collect();
        assert_eq!((later.len(), later.get("k").unwrap().as_str()), (1, "new"));
        assert_eq!(
            serde_json::to_value(schemars::schema_for!(StringMap)).unwrap()["additionalProperties"],
            serde_json::json!({"type": "string"})
        );
    }
}
