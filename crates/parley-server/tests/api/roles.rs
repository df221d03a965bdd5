//! Deny by default: every API route, walked by every role and by nobody.

use crate::helpers::*;
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::collections::BTreeSet;

/// Every API operation (method, path under /api). A test checks that openapi.json documents
/// exactly these, so neither can drift from the other.
const ROUTES: &[(&str, &str)] = &[
    ("POST", "/auth/sign-in"),
    ("POST", "/auth/sign-out"),
    ("GET", "/auth/session"),
    ("POST", "/auth/password"),
    ("GET", "/site"),
    ("PATCH", "/site"),
    ("GET", "/departments"),
    ("POST", "/departments"),
    ("PATCH", "/departments/{id}"),
    ("GET", "/users"),
    ("POST", "/users"),
    ("GET", "/users/{id}"),
    ("PATCH", "/users/{id}"),
    ("GET", "/audit"),
    ("POST", "/widget/session"),
    ("POST", "/widget/conversations"),
    ("GET", "/widget/conversations/{id}/events"),
    ("POST", "/widget/conversations/{id}/messages"),
    ("POST", "/widget/conversations/{id}/end"),
    ("POST", "/widget/ticket"),
    ("POST", "/widget/offline-messages"),
    ("POST", "/console/ticket"),
    ("GET", "/console/overview"),
    ("PUT", "/console/status"),
    ("POST", "/console/conversations/{id}/accept"),
    ("POST", "/console/conversations/{id}/reject"),
    ("POST", "/console/conversations/{id}/end"),
    ("POST", "/console/conversations/{id}/messages"),
    ("POST", "/console/conversations/{id}/transfer"),
    ("GET", "/conversations"),
    ("GET", "/conversations/{id}"),
    ("GET", "/offline-messages"),
    ("POST", "/offline-messages/{id}/handled"),
    ("GET", "/openapi.json"),
    ("GET", "/docs"),
];

const PUBLIC: &[&str] = &["/auth/sign-in", "/openapi.json", "/docs", "/widget/session"];

#[tokio::test]
async fn openapi_documents_exactly_the_routes() {
    let t = TestApp::spawn(Db::Sqlite).await;
    let doc = t.client().get("/api/openapi.json").await.body;
    let mut documented = BTreeSet::new();
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for method in ops.as_object().unwrap().keys() {
            documented.insert((method.to_uppercase(), path.clone()));
        }
    }
    let routed: BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    assert_eq!(documented, routed);
    t.stop().await;
}

#[tokio::test]
async fn every_private_route_needs_a_session() {
    let t = TestApp::spawn(Db::Sqlite).await;
    let c = t.client();
    let some_id = uuid::Uuid::now_v7().to_string();
    for (method, path) in ROUTES {
        let path = path.replace("{id}", &some_id);
        let r = c
            .send(
                method,
                &format!("/api{path}"),
                if *method == "GET" {
                    None
                } else {
                    Some(json!({}))
                },
            )
            .await;
        if PUBLIC.contains(&path.as_str()) {
            assert_ne!(r.status, StatusCode::UNAUTHORIZED, "{method} {path}");
        } else {
            assert_eq!(
                (r.status, r.code()),
                (StatusCode::UNAUTHORIZED, "unauthenticated"),
                "{method} {path}"
            );
        }
    }
    t.stop().await;
}

struct Team {
    admin: Client,
    site_manager: Client,
    dept_manager: Client,
    agent: Client,
    d1: String,
    d2: String,
    agent_d1: String,
    agent_d2: String,
}

async fn team(t: &TestApp) -> Team {
    let acme = t.tenant("Acme").await;
    let admin = t.admin(&acme).await;
    let d1 = value_str(
        &admin
            .post("/api/departments", json!({ "name": "Sales" }))
            .await
            .body["id"],
    );
    let d2 = value_str(
        &admin
            .post("/api/departments", json!({ "name": "Support" }))
            .await
            .body["id"],
    );
    let mut clients = vec![];
    let mut ids = vec![];
    for (role, dept, email) in [
        ("site_manager", None, "sm@acme.test"),
        ("department_manager", Some(&d1), "dm@acme.test"),
        ("agent", Some(&d1), "a1@acme.test"),
        ("agent", Some(&d2), "a2@acme.test"),
    ] {
        let depts: Vec<&String> = dept.into_iter().collect();
        let r = admin.post("/api/users", json!({ "email": email, "display_name": email, "role": role, "department_ids": depts })).await;
        assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
        let c = t.client();
        c.first_sign_in(
            &acme.slug,
            email,
            r.body["one_time_password"].as_str().unwrap(),
        )
        .await;
        ids.push(value_str(&r.body["user"]["id"]));
        clients.push(c);
    }
    let mut clients = clients.into_iter();
    Team {
        admin,
        site_manager: clients.next().unwrap(),
        dept_manager: clients.next().unwrap(),
        agent: clients.next().unwrap(),
        d1,
        d2,
        agent_d1: ids[2].clone(),
        agent_d2: ids[3].clone(),
    }
}

fn unique() -> String {
    uuid::Uuid::now_v7().simple().to_string()
}

#[tokio::test]
async fn every_role_gets_exactly_its_permissions() {
    let t = TestApp::spawn(Db::Sqlite).await;
    let tm = team(&t).await;
    let roles: [(&str, &Client); 4] = [
        ("admin", &tm.admin),
        ("site_manager", &tm.site_manager),
        ("dept_manager", &tm.dept_manager),
        ("agent", &tm.agent),
    ];

    type Case = (&'static str, String, Option<fn(&Team) -> Value>, [u16; 4]);
    let cases: Vec<Case> = vec![
        ("GET", "/api/site".into(), None, [200, 200, 200, 200]),
        (
            "PATCH",
            "/api/site".into(),
            Some(|_| json!({ "name": "Acme Inc" })),
            [200, 200, 403, 403],
        ),
        (
            "PATCH",
            "/api/site".into(),
            Some(|_| json!({ "allowed_origins": ["https://a.test"] })),
            [200, 403, 403, 403],
        ),
        ("GET", "/api/departments".into(), None, [200, 200, 200, 200]),
        (
            "POST",
            "/api/departments".into(),
            Some(|_| json!({ "name": format!("D {}", unique()) })),
            [201, 201, 403, 403],
        ),
        (
            "PATCH",
            format!("/api/departments/{}", tm.d1),
            Some(|_| json!({ "name": format!("Sales {}", unique()) })),
            [200, 200, 403, 403],
        ),
        ("GET", "/api/users".into(), None, [200, 200, 200, 403]),
        (
            "GET",
            format!("/api/users/{}", tm.agent_d2),
            None,
            [200, 200, 404, 403],
        ),
        (
            "GET",
            format!("/api/users/{}", tm.agent_d1),
            None,
            [200, 200, 200, 403],
        ),
        (
            "POST",
            "/api/users".into(),
            Some(
                |tm| json!({ "email": format!("{}@acme.test", unique()), "display_name": "N", "role": "agent", "department_ids": [tm.d1] }),
            ),
            [201, 403, 201, 403],
        ),
        (
            "POST",
            "/api/users".into(),
            Some(
                |tm| json!({ "email": format!("{}@acme.test", unique()), "display_name": "N", "role": "agent", "department_ids": [tm.d2] }),
            ),
            [201, 403, 403, 403],
        ),
        (
            "POST",
            "/api/users".into(),
            Some(
                |tm| json!({ "email": format!("{}@acme.test", unique()), "display_name": "N", "role": "site_admin", "department_ids": [tm.d1] }),
            ),
            [201, 403, 403, 403],
        ),
        (
            "PATCH",
            format!("/api/users/{}", tm.agent_d1),
            Some(|_| json!({ "capacity": 5 })),
            [200, 403, 200, 403],
        ),
        (
            "PATCH",
            format!("/api/users/{}", tm.agent_d2),
            Some(|_| json!({ "capacity": 6 })),
            [200, 403, 404, 403],
        ),
        ("GET", "/api/audit".into(), None, [200, 403, 403, 403]),
        (
            "GET",
            "/api/auth/session".into(),
            None,
            [200, 200, 200, 200],
        ),
        // Last, as the administrator's call changes the agent's role.
        (
            "PATCH",
            format!("/api/users/{}", tm.agent_d1),
            Some(|_| json!({ "role": "site_admin" })),
            [200, 403, 403, 403],
        ),
    ];
    for (method, path, body, expected) in &cases {
        // Least powerful first, so that a change the administrator makes cannot affect the others.
        for (i, (role, client)) in roles.iter().enumerate().rev() {
            let r = client.send(method, path, body.map(|f| f(&tm))).await;
            assert_eq!(
                r.status.as_u16(),
                expected[i],
                "{role} {method} {path}: {:?}",
                r.body
            );
            if r.status == StatusCode::FORBIDDEN {
                assert_eq!(r.code(), "forbidden");
            }
        }
    }
    // A department manager lists only their departments' people (and themselves).
    let listed = tm.dept_manager.get("/api/users").await.body["users"].to_string();
    assert!(
        listed.contains("a1@acme.test")
            && !listed.contains("a2@acme.test")
            && !listed.contains("sm@acme.test")
    );
    // Denials are audited.
    let audit = tm.admin.get("/api/audit?limit=500").await.body["events"].to_string();
    assert!(audit.contains("access.denied"));
    t.stop().await;
}
