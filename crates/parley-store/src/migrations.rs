//! The migration trees, embedded in the binary. Versions are the same in both trees; a test
//! checks that every file in one tree has its twin in the other and is listed here.

pub struct Migration {
    pub version: i64,
    pub name: &'static str,
    pub sqlite: &'static str,
    pub postgres: &'static str,
}

pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "init",
        sqlite: include_str!("../migrations/sqlite/0001_init.sql"),
        postgres: include_str!("../migrations/postgres/0001_init.sql"),
    },
    Migration {
        version: 2,
        name: "chat",
        sqlite: include_str!("../migrations/sqlite/0002_chat.sql"),
        postgres: include_str!("../migrations/postgres/0002_chat.sql"),
    },
    Migration {
        version: 3,
        name: "offer_index",
        sqlite: include_str!("../migrations/sqlite/0003_offer_index.sql"),
        postgres: include_str!("../migrations/postgres/0003_offer_index.sql"),
    },
    Migration {
        version: 4,
        name: "log_is_the_counter",
        sqlite: include_str!("../migrations/sqlite/0004_log_is_the_counter.sql"),
        postgres: include_str!("../migrations/postgres/0004_log_is_the_counter.sql"),
    },
    Migration {
        version: 5,
        name: "client_id_first",
        sqlite: include_str!("../migrations/sqlite/0005_client_id_first.sql"),
        postgres: include_str!("../migrations/postgres/0005_client_id_first.sql"),
    },
    Migration {
        version: 6,
        name: "arrivals_merged",
        sqlite: include_str!("../migrations/sqlite/0006_arrivals_merged.sql"),
        postgres: include_str!("../migrations/postgres/0006_arrivals_merged.sql"),
    },
];

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    fn tree(name: &str) -> BTreeSet<String> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("migrations")
            .join(name);
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn both_trees_have_the_same_versions_and_all_are_embedded() {
        let sqlite = tree("sqlite");
        let postgres = tree("postgres");
        assert_eq!(sqlite, postgres, "migration trees differ");
        let embedded: BTreeSet<String> = MIGRATIONS
            .iter()
            .map(|m| format!("{:04}_{}.sql", m.version, m.name))
            .collect();
        assert_eq!(
            sqlite, embedded,
            "a migration file is not listed in MIGRATIONS"
        );
        let versions: Vec<i64> = MIGRATIONS.iter().map(|m| m.version).collect();
        let mut sorted = versions.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(versions, sorted, "versions must be unique and ascending");
    }
}
