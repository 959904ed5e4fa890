//! Lifecycle notifications: when an instance begins to wait at a hook with a
//! `notificationTarget`, the target receives AWS's lifecycle message as a JSON POST. Delivery is
//! tried once, with a timeout (as an SNS or EventBridge target that is down loses the message);
//! the hook's heartbeat timeout still applies its default result.

use hanul_proto::v1::{AutoScalingInstance, LifecycleHook};
use std::time::{Duration, SystemTime};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tracing::{debug, warn};

/// How long a notification target gets to answer.
pub const TIMEOUT: Duration = Duration::from_secs(5);

/// The lifecycle message, in the shape AWS sends to a hook's target.
pub fn message(
    group: &str,
    hook: &LifecycleHook,
    instance: &str,
    record: Option<&AutoScalingInstance>,
    now: SystemTime,
) -> String {
    let token = format!(
        "{group}/{instance}/{}/{}",
        hook.name,
        record.map_or(0, |r| r.activity)
    );
    serde_json::json!({
        "Origin": if hook.transition.ends_with("LAUNCHING") { "EC2" } else { "AutoScalingGroup" },
        "Destination": if hook.transition.ends_with("LAUNCHING") { "AutoScalingGroup" } else { "EC2" },
        "Service": "AWS Auto Scaling",
        "Time": humantime::format_rfc3339_millis(now).to_string(),
        "AccountId": "hanul",
        "LifecycleTransition": hook.transition,
        "RequestId": token,
        "LifecycleActionToken": token,
        "EC2InstanceId": instance,
        "LifecycleHookName": hook.name,
        "AutoScalingGroupName": group,
        "NotificationMetadata": hook.notification_metadata,
    })
    .to_string()
}

/// POSTs `body` to `url` (`http://host[:port][/path]`), logging the outcome.
pub async fn send(url: String, body: String) {
    match tokio::time::timeout(TIMEOUT, post(&url, &body)).await {
        Ok(Ok(status)) if (200..300).contains(&status) => {
            debug!(url, status, "Lifecycle notification delivered.")
        }
        Ok(Ok(status)) => warn!(url, status, "Lifecycle notification refused."),
        Ok(Err(e)) => warn!(url, error = %e, "Lifecycle notification failed."),
        Err(_) => warn!(url, "Lifecycle notification timed out."),
    }
}

async fn post(url: &str, body: &str) -> std::io::Result<u16> {
    let invalid = || std::io::Error::new(std::io::ErrorKind::InvalidInput, "not an http:// URL");
    let rest = url.strip_prefix("http://").ok_or_else(invalid)?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let addr = if authority.contains(':') {
        authority.to_owned()
    } else {
        format!("{authority}:80")
    };
    let mut stream = TcpStream::connect(addr).await?;
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {authority}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    let mut response = Vec::new();
    let mut buf = [0u8; 1024];
    // The status line is all that matters.
    while !response.windows(2).any(|w| w == b"\r\n") {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        response.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&response);
    line.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, "no HTTP status line"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    #[tokio::test]
    async fn the_target_receives_the_aws_shaped_message() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            loop {
                let n = s.read(&mut buf).await.unwrap();
                got.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&got);
                if let Some((_, body)) = text.split_once("\r\n\r\n")
                    && body.ends_with('}')
                {
                    break;
                }
            }
            s.write_all(b"HTTP/1.1 204 No Content\r\n\r\n")
                .await
                .unwrap();
            String::from_utf8(got).unwrap()
        });
        let hook = LifecycleHook {
            name: "warm".into(),
            transition: "autoscaling:EC2_INSTANCE_LAUNCHING".into(),
            notification_metadata: "cache=on".into(),
            ..Default::default()
        };
        let body = message("web", &hook, "web-b2c4d", None, SystemTime::UNIX_EPOCH);
        assert_eq!(
            post(&format!("http://{addr}/hooks"), &body).await.unwrap(),
            204
        );
        let request = server.await.unwrap();
        assert!(request.starts_with("POST /hooks HTTP/1.1\r\n"), "{request}");
        let json: serde_json::Value =
            serde_json::from_str(request.split_once("\r\n\r\n").unwrap().1).unwrap();
        assert_eq!(
            json["LifecycleTransition"],
            "autoscaling:EC2_INSTANCE_LAUNCHING"
        );
        assert_eq!(json["EC2InstanceId"], "web-b2c4d");
        assert_eq!(json["AutoScalingGroupName"], "web");
        assert_eq!(json["LifecycleHookName"], "warm");
        assert_eq!(json["NotificationMetadata"], "cache=on");
    }
}
