//! Who owns a database object that several Kubernetes objects claim (two KalamNamespaces with
//! the same cluster and database name): the oldest, by creation time and then by name. The
//! others are never applied, so deleting them never drops anything.

use kube::ResourceExt;

/// The name of the object that owns what `me` claims, when it is not `me`. `claimants` are
/// the objects claiming the same thing (`me` may be among them).
pub fn other_owner<K: ResourceExt>(me: &K, claimants: &[&K]) -> Option<String> {
    let key = |o: &K| {
        let created = o.creation_timestamp();
        (created.is_none(), created, o.name_any())
    };
    let mine = key(me);
    claimants
        .iter()
        .map(|o| key(*o))
        .filter(|k| k.2 != mine.2)
        .min()
        .filter(|oldest| *oldest < mine)
        .map(|(_, _, name)| name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ConfigMap;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
    use k8s_openapi::jiff::Timestamp;

    fn obj(name: &str, created: Option<i64>) -> ConfigMap {
        ConfigMap {
            metadata: ObjectMeta {
                name: Some(name.into()),
                creation_timestamp: created.map(|s| Time(Timestamp::from_second(s).unwrap())),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    #[test]
    fn the_oldest_wins_then_the_name() {
        let a = obj("a", Some(200));
        let b = obj("b", Some(100));
        let c = obj("c", Some(100));
        let all = [&a, &b, &c];
        assert_eq!(other_owner(&a, &all), Some("b".to_string()));
        assert_eq!(other_owner(&b, &all), None);
        assert_eq!(other_owner(&c, &all), Some("b".to_string()));
        assert_eq!(other_owner(&a, &[&a]), None);
        assert_eq!(other_owner(&a, &[]), None);
    }

    #[test]
    fn objects_without_a_creation_time_lose() {
        let fresh = obj("fresh", None);
        let old = obj("old", Some(1));
        assert_eq!(other_owner(&fresh, &[&old]), Some("old".to_string()));
        assert_eq!(other_owner(&old, &[&fresh]), None);
    }
}
