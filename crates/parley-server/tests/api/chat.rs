//! Live chat through the real server: widget REST, console REST and the WebSocket gateway.

use crate::both;
use crate::helpers::*;
use parley_core::store::DepartmentRouting;
use reqwest::StatusCode;
use serde_json::{Value, json};

pub struct Desk {
    pub t: TestApp,
    pub site_key: String,
    pub admin: Client,
    pub dept: String,
    pub agents: Vec<(Client, String)>,
}

/// A tenant with one department ("Sales", routing `mode`, offers lapsing after `timeout_ms`) and
/// `n` agents of capacity `capacity`, all online.
pub async fn desk(db: Db, n: usize, capacity: i64, mode: &str, timeout_ms: i64) -> Desk {
    let t = TestApp::spawn(db).await;
    let acme = t.tenant("Acme").await;
    let admin = t.admin(&acme).await;
    let dept = value_str(
        &admin
            .post("/api/departments", json!({ "name": "Sales" }))
            .await
            .body["id"],
    );
    let routing = DepartmentRouting {
        department: dept.parse().unwrap(),
        mode: mode.into(),
        offer_timeout_ms: timeout_ms,
        prechat_fields: r#"{"name":"required","email":"optional","question":"optional"}"#.into(),
    };
    let ev = t.app.audit_event(
        acme.tenant_id,
        parley_core::audit::AuditActor::Operator,
        "department.routing_changed",
        None,
        None,
        json!({}),
    );
    t.app
        .store
        .set_department_routing(acme.tenant_id, &routing, &ev)
        .await
        .unwrap();
    let mut agents = vec![];
    for i in 0..n {
        let email = format!("agent{i}@acme.test");
        let r = admin
            .post("/api/users", json!({ "email": email, "display_name": format!("Agent {i}"), "role": "agent", "department_ids": [dept], "capacity": capacity }))
            .await;
        let c = t.client();
        c.first_sign_in(
            &acme.slug,
            &email,
            r.body["one_time_password"].as_str().unwrap(),
        )
        .await;
        assert_eq!(
            c.send(
                "PUT",
                "/api/console/status",
                Some(json!({ "status": "online" }))
            )
            .await
            .status,
            StatusCode::OK
        );
        agents.push((c, value_str(&r.body["user"]["id"])));
    }
    Desk {
        t,
        site_key: acme.site_key,
        admin,
        dept,
        agents,
    }
}

async fn start(d: &Desk, name: &str) -> (VisitorClient, String) {
    let v = VisitorClient::open(&d.t, &d.site_key).await;
    let r = v
        .send(
            "POST",
            "/api/widget/conversations",
            Some(
                json!({ "department_id": d.dept, "name": name, "question": "Is my card blocked?" }),
            ),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    (v, value_str(&r.body["id"]))
}

both!(visitor_and_agent_chat_with_durable_acks);
async fn visitor_and_agent_chat_with_durable_acks(db: Db) {
    let d = desk(db, 1, 3, "offer", 30_000).await;
    let (agent, agent_id) = &d.agents[0];
    let mut agent_ws = Ws::open(&d.t, &agent.ticket().await).await;

    let v = VisitorClient::open(&d.t, &d.site_key).await;
    assert_eq!(v.session["site_name"], "Acme");
    assert_eq!(v.session["departments"][0]["online"], true);
    let r = v.send("POST", "/api/widget/conversations", Some(json!({ "department_id": d.dept, "name": "Vera Visitor", "email": "vera@example.test", "question": "Is my card blocked?" }))).await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    assert!(
        r.body.get("prechat").is_none(),
        "visitors do not get the pre-chat echo"
    );
    let conv = value_str(&r.body["id"]);

    // The agent is offered the chat, with the pre-chat answers.
    let offer = agent_ws.until("offer").await;
    assert_eq!(offer["conversation"]["id"], conv.as_str());
    assert_eq!(offer["conversation"]["prechat"]["name"], "Vera Visitor");
    let mut visitor_ws = Ws::open(&d.t, &v.ticket().await).await;
    visitor_ws
        .send(json!({ "type": "resume", "conversation_id": conv, "since": 0 }))
        .await;
    let resumed = visitor_ws.until("resumed").await;
    let kinds: Vec<&str> = resumed["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["started", "message"]);
    assert_eq!(resumed["events"][1]["body"], "Is my card blocked?");

    let accepted = agent
        .post(
            &format!("/api/console/conversations/{conv}/accept"),
            json!(null),
        )
        .await;
    assert_eq!(accepted.status, StatusCode::OK, "{:?}", accepted.body);
    let assigned = visitor_ws.event("assigned").await;
    assert_eq!(assigned["data"]["agent_name"], "Agent 0");
    agent_ws.until("chat_assigned").await;

    // Visitor -> agent, acknowledged with its seq after the commit.
    visitor_ws.send(json!({ "type": "send", "conversation_id": conv, "client_msg_id": "v-1", "body": "Hello <b>there</b>" })).await;
    let ack = visitor_ws.until("ack").await;
    assert_eq!(
        (ack["client_msg_id"].as_str(), ack["duplicate"].as_bool()),
        (Some("v-1"), Some(false))
    );
    let seq = ack["seq"].as_i64().unwrap();
    let got = agent_ws.event("message").await;
    assert_eq!(
        (
            got["seq"].as_i64(),
            got["body"].as_str(),
            got["author"].as_str()
        ),
        (Some(seq), Some("Hello <b>there</b>"), Some("visitor"))
    );

    // A resend of the same client id is answered with the original seq; nothing new is stored.
    visitor_ws.send(json!({ "type": "send", "conversation_id": conv, "client_msg_id": "v-1", "body": "Hello <b>there</b>" })).await;
    let again = visitor_ws.until("ack").await;
    assert_eq!(
        (again["seq"].as_i64(), again["duplicate"].as_bool()),
        (Some(seq), Some(true))
    );

    // Typing is relayed, not stored.
    agent_ws
        .send(json!({ "type": "typing", "conversation_id": conv, "on": true }))
        .await;
    let typing = visitor_ws.until("typing").await;
    assert_eq!(
        (typing["who"].as_str(), typing["on"].as_bool()),
        (Some("agent"), Some(true))
    );

    agent_ws.send(json!({ "type": "send", "conversation_id": conv, "client_msg_id": "a-1", "body": "Let me check." })).await;
    let a_ack = agent_ws.until("ack").await;
    let reply = visitor_ws.event("message").await;
    assert_eq!(
        (
            reply["body"].as_str(),
            reply["agent_name"].as_str(),
            reply["seq"].clone()
        ),
        (Some("Let me check."), Some("Agent 0"), a_ack["seq"].clone())
    );

    // Over plain HTTPS the same durable ack.
    let http = v
        .send(
            "POST",
            &format!("/api/widget/conversations/{conv}/messages"),
            Some(json!({ "client_msg_id": "v-2", "body": "Thanks" })),
        )
        .await;
    assert_eq!(
        http.body["seq"].as_i64(),
        Some(a_ack["seq"].as_i64().unwrap() + 1)
    );

    let end = v
        .send(
            "POST",
            &format!("/api/widget/conversations/{conv}/end"),
            None,
        )
        .await;
    assert_eq!(end.status, StatusCode::OK);
    assert_eq!(
        agent_ws.until("chat_closed").await["conversation_id"],
        conv.as_str()
    );
    let late = v
        .send(
            "POST",
            &format!("/api/widget/conversations/{conv}/messages"),
            Some(json!({ "client_msg_id": "v-3", "body": "hello?" })),
        )
        .await;
    assert_eq!(late.code(), "conversation_ended");

    // The transcript shows every message once, in order; the visitor sees the same.
    let detail = agent.get(&format!("/api/conversations/{conv}")).await;
    let events = detail.body["events"].as_array().unwrap();
    let seqs: Vec<i64> = events.iter().map(|e| e["seq"].as_i64().unwrap()).collect();
    assert_eq!(seqs, (1..=seqs.len() as i64).collect::<Vec<_>>());
    let bodies: Vec<&str> = events
        .iter()
        .filter(|e| e["kind"] == "message")
        .map(|e| e["body"].as_str().unwrap())
        .collect();
    assert_eq!(
        bodies,
        [
            "Is my card blocked?",
            "Hello <b>there</b>",
            "Let me check.",
            "Thanks"
        ]
    );
    assert_eq!(
        detail.body["conversation"]["prechat"]["email"],
        "vera@example.test"
    );
    let mine = v
        .send(
            "GET",
            &format!("/api/widget/conversations/{conv}/events?since=0"),
            None,
        )
        .await;
    assert_eq!(mine.body["events"].as_array().unwrap().len(), events.len());
    let list = agent.get("/api/conversations?q=card").await;
    assert_eq!(list.body["conversations"][0]["id"], conv.as_str());
    assert!(
        agent
            .get("/api/conversations?q=nothing-like-this")
            .await
            .body["conversations"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    let overview = agent.get("/api/console/overview").await;
    assert!(overview.body["chats"].as_array().unwrap().is_empty());
    assert_eq!(overview.body["status"], "online");
    let _ = agent_id;
    // Bodies, pre-chat answers and the transfer of names all stay encrypted at rest.
    let raw = raw_database_text(&d.t, db).await;
    for secret in [
        "Is my card blocked",
        "Hello <b>there</b>",
        "Let me check",
        "Vera Visitor",
        "vera@example.test",
    ] {
        assert!(!raw.contains(secret), "found plaintext {secret:?} at rest");
    }
    d.t.stop().await;
}

#[tokio::test]
async fn resume_after_reconnect_gets_exactly_what_was_missed() {
    let d = desk(Db::Sqlite, 1, 3, "assign", 30_000).await;
    let (agent, _) = &d.agents[0];
    let (v, conv) = start(&d, "Vic").await;
    let mut agent_ws = Ws::open(&d.t, &agent.ticket().await).await;
    for i in 0..3 {
        agent
            .post(
                &format!("/api/console/conversations/{conv}/messages"),
                json!({ "client_msg_id": format!("a{i}"), "body": format!("m{i}") }),
            )
            .await;
    }
    agent_ws.send(json!({ "type": "ping" })).await;
    assert_eq!(agent_ws.until("pong").await["type"], "pong");
    // The visitor saw up to seq 3 (started, question, assigned) and then lost the connection.
    let mut ws = Ws::open(&d.t, &v.ticket().await).await;
    ws.send(json!({ "type": "resume", "conversation_id": conv, "since": 3 }))
        .await;
    let resumed = ws.until("resumed").await;
    let got: Vec<(i64, &str)> = resumed["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["seq"].as_i64().unwrap(), e["body"].as_str().unwrap()))
        .collect();
    assert_eq!(got, vec![(4, "m0"), (5, "m1"), (6, "m2")]);
    assert_eq!(resumed["last_seq"], 6);
    d.t.stop().await;
}

/// Live events reach every listener in sequence order however many sockets write at once: a
/// client resumes from the highest seq it saw, so one event overtaken by a later one would never
/// reach it. Several runtime threads, as in the server, so that writers really race.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn live_events_arrive_in_sequence_order() {
    let d = desk(Db::Sqlite, 1, 3, "assign", 30_000).await;
    let (agent, _) = &d.agents[0];
    let (v, conv) = start(&d, "Vic").await;
    // Listening: the agent's console (subscribed to its chats) and a visitor tab.
    let mut listeners = vec![Ws::open(&d.t, &agent.ticket().await).await];
    let mut tab = Ws::open(&d.t, &v.ticket().await).await;
    tab.send(json!({ "type": "resume", "conversation_id": conv, "since": 0 }))
        .await;
    let resumed = tab.until("resumed").await;
    assert_eq!(resumed["last_seq"], 3, "started, question, assigned");
    listeners.push(tab);
    // Writing: four visitor tabs and four console tabs, 15 messages each, all at once.
    let mut writers = vec![];
    for _ in 0..4 {
        writers.push(Ws::open(&d.t, &v.ticket().await).await);
        writers.push(Ws::open(&d.t, &agent.ticket().await).await);
    }
    let tasks: Vec<_> = writers
        .into_iter()
        .enumerate()
        .map(|(w, mut ws)| {
            let conv = conv.clone();
            tokio::spawn(async move {
                for m in 0..15 {
                    ws.send(json!({ "type": "send", "conversation_id": conv, "client_msg_id": format!("w{w}-{m}"), "body": format!("{w}/{m}") }))
                        .await;
                }
                for _ in 0..15 {
                    assert_eq!(ws.until("ack").await["type"], "ack");
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    for mut ws in listeners {
        let mut seqs = vec![];
        while seqs.len() < 120 {
            let e = ws.event("message").await;
            assert_eq!(e["type"], "event", "{e}");
            seqs.push(e["seq"].as_i64().unwrap());
        }
        assert_eq!(seqs, (4..124).collect::<Vec<_>>(), "in sequence order");
    }
    d.t.stop().await;
}

both!(assignment_respects_capacity_and_queue_moves_on);
async fn assignment_respects_capacity_and_queue_moves_on(db: Db) {
    let d = desk(db, 2, 1, "assign", 30_000).await;
    let mut convs = vec![];
    for i in 0..4 {
        convs.push(start(&d, &format!("V{i}")).await);
    }
    let mut assigned = 0;
    for (c, _) in &d.agents {
        let o = c.get("/api/console/overview").await;
        assert_eq!(
            o.body["chats"].as_array().unwrap().len(),
            1,
            "capacity 1 each"
        );
        assigned += 1;
        assert_eq!(o.body["queue"].as_array().unwrap().len(), 2);
    }
    assert_eq!(assigned, 2);
    // The waiting visitor's new socket is told their place.
    let (v3, conv3) = &convs[3];
    let mut ws = Ws::open(&d.t, &v3.ticket().await).await;
    ws.send(json!({ "type": "resume", "conversation_id": conv3, "since": 0 }))
        .await;
    ws.until("resumed").await;
    assert_eq!(ws.until("queue").await["position"], 2);
    // A round that was already running when the socket resumed may have told it too, and the
    // round the resume asked for then tells it again: the same place, nothing else. Once that
    // round is past (200 ms), the socket is quiet.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    ws.send(json!({ "type": "ping" })).await;
    loop {
        let f = ws.next().await;
        if f["type"] == "pong" {
            break;
        }
        assert_eq!(
            (f["type"].as_str(), f["position"].as_i64()),
            (Some("queue"), Some(2)),
            "only a repeat of the place: {f}"
        );
    }
    // A chat joining behind them changes nothing for them: no frame (a round comes within 200
    // ms of the change; the pong after 500 ms comes after any frame of it).
    convs.push(start(&d, "V4").await);
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    ws.send(json!({ "type": "ping" })).await;
    let next = ws.next().await;
    assert_eq!(next["type"], "pong", "unchanged place sent again: {next}");
    // Ending a chat frees a slot: the oldest waiting chat is assigned, and the queue moves up.
    let (c0, _) = &d.agents[0];
    let mine = value_str(&c0.get("/api/console/overview").await.body["chats"][0]["id"]);
    assert_eq!(
        c0.post(
            &format!("/api/console/conversations/{mine}/end"),
            json!(null)
        )
        .await
        .status,
        StatusCode::OK
    );
    let q = ws.until("queue").await;
    assert_eq!(q["position"], 1);
    assert!(q["estimated_wait_secs"].as_i64().unwrap() > 0);
    let now_mine = c0.get("/api/console/overview").await;
    assert_eq!(
        now_mine.body["chats"][0]["id"],
        convs[2].1.as_str(),
        "oldest waiting first"
    );
    d.t.stop().await;
}

#[tokio::test]
async fn lapsed_offers_move_to_the_next_agent_and_rejects_too() {
    let d = desk(Db::Sqlite, 2, 2, "offer", 300).await;
    let (_, conv) = start(&d, "Olga").await;
    let offered = |o: &Value| {
        o["offers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["id"] == conv.as_str())
    };
    let first = if offered(&d.agents[0].0.get("/api/console/overview").await.body) {
        0
    } else {
        1
    };
    let mut other_ws = Ws::open(&d.t, &d.agents[1 - first].0.ticket().await).await;
    // Nobody accepts: after 300 ms the offer lapses and goes to the other agent.
    let offer = other_ws.until("offer").await;
    assert_eq!(offer["conversation"]["id"], conv.as_str());
    // The second agent rejects; the first already let it lapse, so it waits in the queue.
    let r = d.agents[1 - first]
        .0
        .post(
            &format!("/api/console/conversations/{conv}/reject"),
            json!(null),
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let o = d.agents[first].0.get("/api/console/overview").await;
    assert!(!offered(&o.body));
    assert_eq!(o.body["queue"][0]["id"], conv.as_str());
    // Anyone of the department may still pick it from the queue.
    let taken = d.agents[first]
        .0
        .post(
            &format!("/api/console/conversations/{conv}/accept"),
            json!(null),
        )
        .await;
    assert_eq!(taken.status, StatusCode::OK, "{:?}", taken.body);
    d.t.stop().await;
}

#[tokio::test]
async fn transfer_with_a_note_only_agents_see() {
    let d = desk(Db::Sqlite, 2, 2, "offer", 30_000).await;
    let (v, conv) = start(&d, "Tom").await;
    let (a0, a0_id) = &d.agents[0];
    let (a1, a1_id) = &d.agents[1];
    let (from, from_id, to, to_id) = if a0
        .post(
            &format!("/api/console/conversations/{conv}/accept"),
            json!(null),
        )
        .await
        .status
        == StatusCode::OK
    {
        (a0, a0_id, a1, a1_id)
    } else {
        assert_eq!(
            a1.post(
                &format!("/api/console/conversations/{conv}/accept"),
                json!(null)
            )
            .await
            .status,
            StatusCode::OK
        );
        (a1, a1_id, a0, a0_id)
    };
    let mut to_ws = Ws::open(&d.t, &to.ticket().await).await;
    let r = from
        .post(
            &format!("/api/console/conversations/{conv}/transfer"),
            json!({ "agent_id": to_id, "note": "VIP, card blocked since Monday" }),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.body["agent_id"], to_id.as_str());
    to_ws.until("chat_assigned").await;
    assert_eq!(
        from.post(
            &format!("/api/console/conversations/{conv}/messages"),
            json!({ "client_msg_id": "x", "body": "still mine?" })
        )
        .await
        .code(),
        "not_assigned"
    );
    let seen_by_agent = to.get(&format!("/api/conversations/{conv}")).await;
    let t = seen_by_agent.body["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["kind"] == "transferred")
        .unwrap()
        .clone();
    assert_eq!(t["body"], "VIP, card blocked since Monday");
    assert_eq!(t["data"]["from_agent_id"], from_id.as_str());
    let seen_by_visitor = v
        .send(
            "GET",
            &format!("/api/widget/conversations/{conv}/events"),
            None,
        )
        .await;
    let vt = seen_by_visitor.body["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["kind"] == "transferred")
        .unwrap()
        .clone();
    assert!(vt["body"].is_null(), "the note is for agents only");
    assert_eq!(
        to.post(
            &format!("/api/console/conversations/{conv}/end"),
            json!(null)
        )
        .await
        .status,
        StatusCode::OK
    );
    d.t.stop().await;
}

both!(offline_messages_when_nobody_is_online);
async fn offline_messages_when_nobody_is_online(db: Db) {
    let d = desk(db, 1, 2, "offer", 30_000).await;
    let (agent, _) = &d.agents[0];
    agent
        .send(
            "PUT",
            "/api/console/status",
            Some(json!({ "status": "offline" })),
        )
        .await;
    let v = VisitorClient::open(&d.t, &d.site_key).await;
    assert_eq!(v.session["departments"][0]["online"], false);
    let r = v
        .send(
            "POST",
            "/api/widget/conversations",
            Some(json!({ "department_id": d.dept, "name": "Nina" })),
        )
        .await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::CONFLICT, "no_agent_online")
    );
    let bad = v.send("POST", "/api/widget/offline-messages", Some(json!({ "department_id": d.dept, "name": "Nina", "email": "nope", "message": "hi" }))).await;
    assert_eq!(bad.code(), "invalid_email");
    let r = v.send("POST", "/api/widget/offline-messages", Some(json!({ "department_id": d.dept, "name": "Nina", "email": "nina@example.test", "message": "Please call me back." }))).await;
    assert_eq!(r.status, StatusCode::CREATED);
    let list = agent.get("/api/offline-messages").await;
    let m = &list.body["offline_messages"][0];
    assert_eq!(
        (m["name"].as_str(), m["message"].as_str()),
        (Some("Nina"), Some("Please call me back."))
    );
    let id = value_str(&m["id"]);
    assert_eq!(
        agent
            .post(&format!("/api/offline-messages/{id}/handled"), json!(null))
            .await
            .status,
        StatusCode::NO_CONTENT
    );
    assert!(
        agent.get("/api/offline-messages").await.body["offline_messages"][0]["handled_at"].is_i64()
    );
    d.t.stop().await;
}

#[tokio::test]
async fn sockets_are_guarded() {
    let d = desk(Db::Sqlite, 1, 2, "assign", 30_000).await;
    // Cross-site and origin-less handshakes are refused.
    assert!(
        Ws::connect_raw(&d.t, Some("https://evil.example"))
            .await
            .is_err()
    );
    assert!(Ws::connect_raw(&d.t, None).await.is_err());
    // A socket must say hello with a valid ticket.
    let mut ws = Ws::connect_raw(&d.t, Some(&d.t.url(""))).await.unwrap();
    ws.send(json!({ "type": "hello", "ticket": "t1.v.x.y.9999999999999.AAAA" }))
        .await;
    assert_eq!(ws.next().await["code"], 4401);
    let mut ws = Ws::connect_raw(&d.t, Some(&d.t.url(""))).await.unwrap();
    ws.send(json!({ "type": "send", "conversation_id": "x", "client_msg_id": "1", "body": "hi" }))
        .await;
    assert_eq!(ws.next().await["code"], 4401);

    // A visitor cannot reach another visitor's chat, and bad frames get clear errors.
    let (_, conv) = start(&d, "Ann").await;
    let eve = VisitorClient::open(&d.t, &d.site_key).await;
    let mut ws = Ws::open(&d.t, &eve.ticket().await).await;
    ws.send(
        json!({ "type": "send", "conversation_id": conv, "client_msg_id": "e1", "body": "boo" }),
    )
    .await;
    let nack = ws.until("nack").await;
    assert_eq!(nack["code"], "not_found");
    ws.send(json!({ "type": "resume", "conversation_id": conv, "since": 0 }))
        .await;
    assert_eq!(ws.until("error").await["code"], "not_found");
    ws.send(json!({ "type": "dance" })).await;
    assert_eq!(ws.until("error").await["code"], "bad_frame");
    ws.send(
        json!({ "type": "send", "conversation_id": conv, "client_msg_id": "bad id!", "body": "x" }),
    )
    .await;
    assert_eq!(ws.until("nack").await["code"], "invalid_client_msg_id");
    // A frame over 16 KiB closes the socket.
    let big = "x".repeat(20_000);
    let _ = ws
        .send_raw(tokio_tungstenite::tungstenite::Message::text(
            json!({ "type": "typing", "conversation_id": big, "on": true }).to_string(),
        ))
        .await;
    assert_eq!(ws.until("closed").await["type"], "closed");
    // A visitor token does not open the console API, nor a session cookie the widget API.
    let r = eve.send("GET", "/api/console/overview", None).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let r = d.agents[0]
        .0
        .post(
            &format!("/api/widget/conversations/{conv}/messages"),
            json!({ "client_msg_id": "z", "body": "x" }),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    d.t.stop().await;
}

both!(chats_never_cross_tenants);
async fn chats_never_cross_tenants(db: Db) {
    let d = desk(db, 1, 2, "assign", 30_000).await;
    let (_, conv) = start(&d, "Acme visitor").await;
    let globex = d.t.tenant("Globex").await;
    let g_admin = d.t.admin(&globex).await;
    // Globex's staff and visitors see nothing of Acme's chat.
    assert_eq!(
        g_admin
            .get(&format!("/api/conversations/{conv}"))
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        g_admin
            .post(
                &format!("/api/console/conversations/{conv}/accept"),
                json!(null)
            )
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    assert!(
        g_admin.get("/api/conversations").await.body["conversations"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    let g_visitor = VisitorClient::open(&d.t, &globex.site_key).await;
    assert_eq!(
        g_visitor
            .send(
                "GET",
                &format!("/api/widget/conversations/{conv}/events"),
                None
            )
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    let r = g_visitor
        .send(
            "POST",
            "/api/widget/conversations",
            Some(json!({ "department_id": d.dept, "name": "X" })),
        )
        .await;
    assert_eq!(r.code(), "unknown_department");
    let overview = g_admin.get("/api/console/overview").await;
    assert!(!overview.body.to_string().contains(&conv));
    // An unknown site key opens nothing.
    let r = reqwest::Client::new()
        .post(d.t.url("/api/widget/session"))
        .json(&json!({ "site_key": "site_nope" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    d.t.stop().await;
}

#[tokio::test]
async fn new_visitors_are_limited_per_address_and_returning_ones_are_not() {
    let d = desk(Db::Sqlite, 1, 1, "assign", 30_000).await;
    let from = |ip: [u8; 4]| {
        reqwest::Client::builder()
            .local_address(std::net::IpAddr::from(ip))
            .build()
            .unwrap()
    };
    let session = |http: reqwest::Client, token: Option<String>| {
        let (url, site_key) = (d.t.url("/api/widget/session"), d.site_key.clone());
        async move {
            let r = http
                .post(url)
                .json(&json!({ "site_key": site_key, "visitor_token": token }))
                .send()
                .await
                .unwrap();
            let retry = r.headers().get("retry-after").is_some();
            (r.status(), retry, r.json::<Value>().await.unwrap())
        }
    };
    let here = from([127, 0, 0, 1]);
    // The desk's own visitors came from this address too; fill the window up to the limit.
    let mut tokens = vec![];
    loop {
        let (status, _, body) = session(here.clone(), None).await;
        if status != StatusCode::OK {
            assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
            assert_eq!(body["code"], "too_many_visitors");
            break;
        }
        tokens.push(value_str(&body["visitor_token"]));
        assert!(tokens.len() <= 1000, "no limit after 1000 new visitors");
    }
    assert!(tokens.len() >= 990, "limited early: {}", tokens.len());
    let (status, retry, _) = session(here.clone(), None).await;
    assert_eq!((status, retry), (StatusCode::TOO_MANY_REQUESTS, true));
    // A returning visitor is served as before, with the same token.
    let (status, _, body) = session(here.clone(), Some(tokens[7].clone())).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["visitor_token"], tokens[7].as_str());
    // Another address is not limited by this one.
    let (status, _, _) = session(from([127, 0, 0, 2]), None).await;
    assert_eq!(status, StatusCode::OK);
    d.t.stop().await;
}

#[tokio::test]
async fn the_widget_frame_is_framed_only_by_allowed_sites() {
    let d = desk(Db::Sqlite, 1, 2, "assign", 30_000).await;
    d.admin
        .patch(
            "/api/site",
            json!({ "allowed_origins": ["https://shop.acme.test"] }),
        )
        .await;
    let http = reqwest::Client::new();
    let frame = format!("/widget/frame?site={}", d.site_key);
    let r = http
        .get(d.t.url(&frame))
        .header("referer", "https://shop.acme.test/products/1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let csp = r.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        csp.contains("frame-ancestors https://shop.acme.test"),
        "{csp}"
    );
    assert!(
        r.headers().get("x-frame-options").is_none(),
        "frame-ancestors decides, not X-Frame-Options"
    );
    let evil = http
        .get(d.t.url(&frame))
        .header("referer", "https://evil.example/")
        .send()
        .await
        .unwrap();
    assert_eq!(evil.status(), StatusCode::FORBIDDEN);
    assert_eq!(
        http.get(d.t.url("/widget/frame?site=site_unknown"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::NOT_FOUND
    );
    let loader = http.get(d.t.url("/widget.js")).send().await.unwrap();
    assert_eq!(
        loader.headers()["cross-origin-resource-policy"],
        "cross-origin"
    );
    let size = loader.bytes().await.unwrap().len();
    assert!(size < 10 * 1024, "the loader is small: {size} bytes");
    // Every other page still refuses to be framed.
    let admin = http.get(d.t.url("/admin")).send().await.unwrap();
    assert_eq!(admin.headers()["x-frame-options"], "DENY");
    d.t.stop().await;
}

#[tokio::test]
async fn silent_visitors_turn_weak_then_lost_and_come_back_or_time_out() {
    let d = desk(Db::Sqlite, 1, 3, "assign", 30_000).await;
    let (agent, agent_id) = &d.agents[0];
    let tenant =
        d.t.app
            .store
            .tenant_by_site_key(&d.site_key)
            .await
            .unwrap()
            .unwrap()
            .id;
    // Short periods for the test (the API keeps them at a second or more).
    let periods = parley_core::conversation::ConnectionPeriods {
        weak_after_ms: 300,
        lost_after_ms: 2000,
        timeout_ms: 5000,
    };
    let ev = d.t.app.audit_event(
        tenant,
        parley_core::audit::AuditActor::Operator,
        "site.updated",
        None,
        None,
        json!({}),
    );
    d.t.app
        .store
        .set_connection_periods(tenant, &periods, &ev)
        .await
        .unwrap();
    let mut agent_ws = Ws::open(&d.t, &agent.ticket().await).await;

    // Visitor 1 goes quiet, then comes back while lost: the agent sees weak, lost, restored.
    let (v, conv) = start(&d, "Wanda").await;
    // The console is told of the chat as the assignment left it (built from the queue's read,
    // not read again): assigned to them, its last seq the assignment's, the pre-chat answers.
    let assigned = agent_ws.until("chat_assigned").await;
    let c = &assigned["conversation"];
    assert_eq!(
        (
            c["id"].as_str(),
            c["status"].as_str(),
            c["agent_id"].as_str(),
            c["offered_to"].as_str(),
            c["last_seq"].as_i64(),
            c["prechat"]["name"].as_str()
        ),
        (
            Some(conv.as_str()),
            Some("assigned"),
            Some(agent_id.as_str()),
            None,
            Some(3),
            Some("Wanda")
        ),
        "started, question, assigned: {c}"
    );
    agent_ws
        .send(json!({ "type": "resume", "conversation_id": conv, "since": 0 }))
        .await;
    let resumed = agent_ws.until("resumed").await;
    let mut states: Vec<String> = resumed["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "connection")
        .map(|e| value_str(&e["data"]["state"]))
        .collect();
    // Weak comes first; a busy timer may step straight from connected to lost.
    while states.last().map(String::as_str) != Some("lost") {
        states.push(value_str(
            &agent_ws.event("connection").await["data"]["state"],
        ));
    }
    assert!(
        states == ["weak", "lost"] || states == ["lost"],
        "{states:?}"
    );
    let mut vws = Ws::open(&d.t, &v.ticket().await).await;
    vws.send(json!({ "type": "resume", "conversation_id": conv, "since": 0 }))
        .await;
    vws.until("resumed").await;
    let back = agent_ws.event("connection").await;
    assert_eq!(back["data"]["state"], "restored");
    let detail = agent.get(&format!("/api/conversations/{conv}")).await;
    assert_eq!(
        detail.body["conversation"]["agent_id"],
        d.agents[0].1.as_str(),
        "same agent after coming back"
    );
    drop(vws);

    // Silent for longer than lost + timeout: the chat ends and the agent's slot is freed.
    let ended = agent_ws.event("ended").await;
    assert_eq!(ended["data"]["reason"], "visitor_timeout");
    let again = v
        .send(
            "GET",
            "/api/widget/conversations/{}/events"
                .replace("{}", &conv)
                .as_str(),
            None,
        )
        .await;
    assert_eq!(
        again.body["events"].as_array().unwrap().last().unwrap()["kind"],
        "ended"
    );
    // Returning after that, the visitor starts again in the queue.
    let fresh = v
        .send(
            "POST",
            "/api/widget/conversations",
            Some(json!({ "department_id": d.dept, "name": "Wanda" })),
        )
        .await;
    assert_eq!(fresh.status, StatusCode::CREATED);
    assert_ne!(fresh.body["id"], conv.as_str());
    d.t.stop().await;
}

both!(department_settings_shape_routing_and_the_prechat_form);
async fn department_settings_shape_routing_and_the_prechat_form(db: Db) {
    let d = desk(db, 1, 3, "offer", 30_000).await;
    let path = format!("/api/departments/{}", d.dept);
    let r = d
        .admin
        .patch(&path, json!({ "routing_mode": "assign", "offer_timeout_secs": 20, "prechat_fields": { "name": "hidden", "email": "required", "question": "optional" } }))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(
        (
            r.body["routing_mode"].as_str(),
            r.body["offer_timeout_secs"].as_i64()
        ),
        (Some("assign"), Some(20))
    );
    for (body, code) in [
        (
            json!({ "routing_mode": "roundrobin" }),
            "invalid_routing_mode",
        ),
        (json!({ "offer_timeout_secs": 1 }), "out_of_range"),
        (
            json!({ "prechat_fields": { "name": "maybe", "email": "required", "question": "optional" } }),
            "invalid_body",
        ),
        (json!({}), "nothing_to_change"),
    ] {
        assert_eq!(
            d.admin.patch(&path, body.clone()).await.code(),
            code,
            "{body}"
        );
    }
    // Agents may not change departments.
    assert_eq!(
        d.agents[0]
            .0
            .patch(&path, json!({ "routing_mode": "offer" }))
            .await
            .code(),
        "forbidden"
    );
    // The widget asks what the department asks.
    let v = VisitorClient::open(&d.t, &d.site_key).await;
    assert_eq!(
        v.session["departments"][0]["prechat_fields"],
        json!({ "name": "hidden", "email": "required", "question": "optional" })
    );
    let missing = v
        .send(
            "POST",
            "/api/widget/conversations",
            Some(json!({ "department_id": d.dept, "name": "Ignored" })),
        )
        .await;
    assert_eq!(
        (missing.code(), missing.body["field"].as_str()),
        ("required", Some("email"))
    );
    let ok = v
        .send(
            "POST",
            "/api/widget/conversations",
            Some(json!({ "department_id": d.dept, "name": "Ignored", "email": "x@example.test" })),
        )
        .await;
    assert_eq!(ok.status, StatusCode::CREATED);
    // Assigned directly, no offer; the hidden name was not kept.
    assert_eq!(ok.body["status"], "assigned");
    let detail = d.agents[0]
        .0
        .get(&format!("/api/conversations/{}", value_str(&ok.body["id"])))
        .await;
    assert!(detail.body["conversation"]["prechat"]["name"].is_null());
    d.t.stop().await;
}
