use super::*;

const ALLOC: Allocation = Allocation {
    uid_min: 1000,
    uid_limit: 1_000_000_000,
    slots: 256,
};

fn new_user(login: &str) -> NewUser {
    NewUser {
        login: login.parse().unwrap(),
        email: format!("{login}@example.com").parse().unwrap(),
        display_name: DisplayName::parse(login).unwrap(),
        role: Role::Member,
        profile: "homelabber".parse().unwrap(),
        services: BTreeSet::new(),
    }
}

fn service(name: &str) -> Service {
    Service {
        name: name.parse().unwrap(),
        category: "media".parse().unwrap(),
        url: "https://x.lab".parse().unwrap(),
        upstream: "10.0.0.1:80".parse().unwrap(),
        required_role: Role::Member,
        owner: None,
        icon: None,
    }
}

#[test]
fn users_get_increasing_uids_and_the_lowest_free_slot() {
    let s = Store::open_in_memory().unwrap();
    let a = s.create_user(&new_user("alice"), ALLOC, 1).unwrap();
    let b = s.create_user(&new_user("bob"), ALLOC, 1).unwrap();
    let c = s.create_user(&new_user("carol"), ALLOC, 1).unwrap();
    assert_eq!((a.uid, b.uid, c.uid), (1000, 1001, 1002));
    assert_eq!((a.slot, b.slot, c.slot), (0, 1, 2));
    assert_eq!(a.gid, a.uid);
    assert_eq!(a.box_state, "absent");
    assert!(s.delete_user(b.id).unwrap());
    let d = s.create_user(&new_user("dave"), ALLOC, 1).unwrap();
    assert_eq!(d.slot, 1, "a released slot is reused");
    assert_eq!(d.uid, 1003, "uids are never reused");
}

#[test]
fn duplicate_login_or_email_is_a_conflict_and_changes_nothing() {
    let s = Store::open_in_memory().unwrap();
    s.create_user(&new_user("alice"), ALLOC, 1).unwrap();
    let err = s.create_user(&new_user("alice"), ALLOC, 1).unwrap_err();
    assert!(matches!(err, StoreError::Conflict("login")), "{err:?}");
    let mut other = new_user("alice2");
    other.email = "alice@example.com".parse().unwrap();
    assert!(matches!(
        s.create_user(&other, ALLOC, 1),
        Err(StoreError::Conflict("email"))
    ));
    assert_eq!(s.list_users(&UserFilter::default()).unwrap().len(), 1);
    let next = s.create_user(&new_user("bob"), ALLOC, 1).unwrap();
    assert_eq!(next.uid, 1001, "failed creates consume no uid");
}

#[test]
fn pool_and_uid_exhaustion_are_reported() {
    let s = Store::open_in_memory().unwrap();
    let tiny = Allocation { slots: 1, ..ALLOC };
    s.create_user(&new_user("alice"), tiny, 1).unwrap();
    assert!(matches!(
        s.create_user(&new_user("bob"), tiny, 1),
        Err(StoreError::PoolExhausted)
    ));
    let no_uids = Allocation {
        uid_limit: 1001,
        ..ALLOC
    };
    assert!(matches!(
        s.create_user(&new_user("bob"), no_uids, 1),
        Err(StoreError::UidsExhausted)
    ));
}

#[test]
fn users_are_found_by_login_or_email_and_filtered() {
    let s = Store::open_in_memory().unwrap();
    s.create_user(&new_user("alice"), ALLOC, 1).unwrap();
    let mut demo = new_user("visitor");
    demo.role = Role::Demo;
    demo.profile = "demo".parse().unwrap();
    s.create_user(&demo, ALLOC, 1).unwrap();
    assert_eq!(
        s.find_user("alice").unwrap().unwrap().login.as_str(),
        "alice"
    );
    assert_eq!(
        s.find_user("ALICE@Example.com")
            .unwrap()
            .unwrap()
            .login
            .as_str(),
        "alice"
    );
    assert!(s.find_user("nobody").unwrap().is_none());
    let demos = s
        .list_users(&UserFilter {
            role: Some(Role::Demo),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(demos.len(), 1);
    assert_eq!(demos[0].login.as_str(), "visitor");
    let disabled = s
        .list_users(&UserFilter {
            disabled: Some(true),
            ..Default::default()
        })
        .unwrap();
    assert!(disabled.is_empty());
}

#[test]
fn update_changes_only_given_fields_and_services() {
    let s = Store::open_in_memory().unwrap();
    s.insert_service(&service("jellyfin"), None, 1).unwrap();
    let a = s.create_user(&new_user("alice"), ALLOC, 1).unwrap();
    let up = UserUpdate {
        role: Some(Role::Admin),
        disabled: Some(true),
        services: Some(["jellyfin".parse().unwrap()].into()),
        ..Default::default()
    };
    let u = s.update_user(a.id, &up, 5).unwrap().unwrap();
    assert_eq!(u.role, Role::Admin);
    assert!(u.disabled);
    assert_eq!(u.display_name, a.display_name);
    assert_eq!(u.services.len(), 1);
    assert_eq!(u.updated_at, 5);
    assert!(s.update_user(9999, &up, 5).unwrap().is_none());
}

#[test]
fn deleting_a_user_removes_tokens_state_assignments_and_ownership() {
    let s = Store::open_in_memory().unwrap();
    let mut alice = new_user("alice");
    s.insert_service(&service("jellyfin"), None, 1).unwrap();
    alice.services = ["jellyfin".parse().unwrap()].into();
    let a = s.create_user(&alice, ALLOC, 1).unwrap();
    let mut owned = service("alices-app");
    owned.owner = Some(a.login.clone());
    s.insert_service(&owned, Some(a.id), 1).unwrap();
    s.insert_token(&TokenRecord {
        id: "aaaaaaaaaaaa".into(),
        hash: [7; 32],
        kind: TokenKind::User,
        user_id: Some(a.id),
        user_login: None,
        name: "laptop".into(),
        created_at: 1,
        expires_at: 100,
        revoked_at: None,
    })
    .unwrap();
    s.put_state(a.id, "wallpaper", "\"blue\"", 1).unwrap();
    assert_eq!(
        s.service("alices-app").unwrap().unwrap().owner,
        Some(a.login.clone())
    );

    assert!(s.delete_user(a.id).unwrap());
    assert!(s.token("aaaaaaaaaaaa").unwrap().is_none());
    assert!(s.list_state(a.id).unwrap().is_empty());
    assert_eq!(s.service("alices-app").unwrap().unwrap().owner, None);
    assert!(!s.delete_user(a.id).unwrap());
}

#[test]
fn deleting_a_service_unassigns_it() {
    let s = Store::open_in_memory().unwrap();
    s.insert_service(&service("jellyfin"), None, 1).unwrap();
    assert!(matches!(
        s.insert_service(&service("jellyfin"), None, 1),
        Err(StoreError::Conflict(_))
    ));
    let mut alice = new_user("alice");
    alice.services = ["jellyfin".parse().unwrap()].into();
    let a = s.create_user(&alice, ALLOC, 1).unwrap();
    assert!(s.delete_service("jellyfin").unwrap());
    assert!(s.user_by_id(a.id).unwrap().unwrap().services.is_empty());
    assert!(!s.delete_service("jellyfin").unwrap());
}

#[test]
fn tokens_store_hashes_and_revocation_keeps_the_first_time() {
    let s = Store::open_in_memory().unwrap();
    assert!(!s.has_admin_token().unwrap());
    let t = TokenRecord {
        id: "0123456789ab".into(),
        hash: [1; 32],
        kind: TokenKind::Admin,
        user_id: None,
        user_login: None,
        name: "first".into(),
        created_at: 10,
        expires_at: 20,
        revoked_at: None,
    };
    s.insert_token(&t).unwrap();
    assert!(s.has_admin_token().unwrap());
    let got = s.token("0123456789ab").unwrap().unwrap();
    assert_eq!(got.hash, [1; 32]);
    assert!(s.revoke_token("0123456789ab", 15).unwrap());
    assert!(s.revoke_token("0123456789ab", 16).unwrap());
    assert_eq!(
        s.token("0123456789ab").unwrap().unwrap().revoked_at,
        Some(15)
    );
    assert!(!s.revoke_token("nope", 1).unwrap());
    // A user token must name a user, an admin token must not (schema CHECK).
    let bad = TokenRecord {
        id: "x".into(),
        kind: TokenKind::User,
        ..t
    };
    assert!(s.insert_token(&bad).is_err());
}

#[test]
fn audit_is_newest_first_filtered_paginated_and_pruned() {
    let s = Store::open_in_memory().unwrap();
    for i in 0..10 {
        s.append_audit(&AuditRecord {
            id: 0,
            time: 100 + i,
            actor: if i % 2 == 0 {
                "root".into()
            } else {
                "alice".into()
            },
            token_id: None,
            peer: "unix".into(),
            action: if i < 5 {
                "user.create".into()
            } else {
                "token.create".into()
            },
            target: format!("t{i}"),
            outcome: "ok".into(),
            detail: None,
        })
        .unwrap();
    }
    let all = s
        .query_audit(&AuditFilter {
            limit: 100,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(all.len(), 10);
    assert!(all.windows(2).all(|w| w[0].id > w[1].id));
    let page = s
        .query_audit(&AuditFilter {
            limit: 3,
            ..Default::default()
        })
        .unwrap();
    let next = s
        .query_audit(&AuditFilter {
            limit: 3,
            before: Some(page[2].id),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(next[0].id, page[2].id - 1);
    let users = s
        .query_audit(&AuditFilter {
            action: Some("user".into()),
            limit: 100,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(users.len(), 5);
    let alice = s
        .query_audit(&AuditFilter {
            actor: Some("alice".into()),
            limit: 100,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(alice.len(), 5);
    let window = s
        .query_audit(&AuditFilter {
            since: Some(102),
            until: Some(104),
            limit: 100,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(window.len(), 3);
    assert_eq!(s.prune_audit(105).unwrap(), 5);
    assert_eq!(s.counts(0).unwrap().audit_entries, 5);
}

#[test]
fn reopening_a_database_keeps_data_and_refuses_newer_schemas() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("o.db");
    {
        let s = Store::open(&path).unwrap();
        s.create_user(&new_user("alice"), ALLOC, 1).unwrap();
    }
    let s = Store::open(&path).unwrap();
    assert!(s.find_user("alice").unwrap().is_some());
    let mode: String = s
        .conn()
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    s.conn().pragma_update(None, "user_version", 99).unwrap();
    drop(s);
    assert!(matches!(
        Store::open(&path),
        Err(StoreError::TooNew { found: 99, .. })
    ));
}
