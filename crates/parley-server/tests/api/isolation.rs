//! Tenants never meet: with another tenant's ids, every route answers 404 (or refuses the id as
//! unknown) and leaks nothing.

use crate::both;
use crate::helpers::*;
use reqwest::StatusCode;
use serde_json::json;

both!(another_tenants_ids_lead_nowhere);
async fn another_tenants_ids_lead_nowhere(db: Db) {
    let t = TestApp::spawn(db).await;
    let acme = t.tenant("Acme").await;
    let globex = t.tenant("Globex").await;
    let a = t.admin(&acme).await;
    let g = t.admin(&globex).await;
    let g_dept = value_str(
        &g.post("/api/departments", json!({ "name": "Globex Secret Ops" }))
            .await
            .body["id"],
    );
    let g_user = g
        .post("/api/users", json!({ "email": "hank.scorpio@globex.test", "display_name": "Hank Scorpio", "role": "agent", "department_ids": [g_dept] }))
        .await;
    let g_user = value_str(&g_user.body["user"]["id"]);
    let g_admin = value_str(&g.get("/api/auth/session").await.body["user"]["id"]);

    let mut bodies = vec![];
    for id in [&g_user, &g_admin] {
        let r = a.get(&format!("/api/users/{id}")).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND);
        bodies.push(r.body.to_string());
        let r = a
            .patch(&format!("/api/users/{id}"), json!({ "disabled": true }))
            .await;
        assert_eq!(r.status, StatusCode::NOT_FOUND);
        bodies.push(r.body.to_string());
    }
    let r = a
        .patch(
            &format!("/api/departments/{g_dept}"),
            json!({ "name": "Pwned" }),
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = a.post("/api/users", json!({ "email": "spy@acme.test", "display_name": "Spy", "role": "agent", "department_ids": [g_dept] })).await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::UNPROCESSABLE_ENTITY, "unknown_department")
    );
    let r = a
        .patch(
            &format!(
                "/api/users/{}",
                value_str(&a.get("/api/auth/session").await.body["user"]["id"])
            ),
            json!({ "department_ids": [g_dept] }),
        )
        .await;
    assert_eq!(r.code(), "unknown_department");
    for path in [
        "/api/users",
        "/api/departments",
        "/api/site",
        "/api/audit?limit=500",
        "/api/auth/session",
    ] {
        bodies.push(a.get(path).await.body.to_string());
    }
    let seen = bodies.join("\n");
    for leak in [
        "Globex",
        "globex",
        "Hank",
        "hank.scorpio",
        &g_user,
        &g_dept,
        &g_admin,
        &globex.site_key,
        &globex.tenant_id.to_string(),
    ] {
        assert!(!seen.contains(leak), "acme saw {leak:?}");
    }
    // Globex is untouched.
    let still = g.get(&format!("/api/users/{g_user}")).await;
    assert_eq!(
        (still.status, still.body["disabled"].as_bool()),
        (StatusCode::OK, Some(false))
    );
    assert_eq!(
        g.get("/api/departments").await.body["departments"][0]["name"],
        "Globex Secret Ops"
    );
    t.stop().await;
}
