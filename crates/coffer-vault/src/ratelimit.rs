//! Rate limits per user and per tenant: token buckets, separate from the
//! guess limit. The guess limit protects the key; these protect the service.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

/// Limits, from `serve` flags.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Sessions a user may open per minute (sustained).
    pub user_per_minute: f64,
    /// Burst a user may open at once.
    pub user_burst: f64,
    /// Sessions a tenant may open per second (sustained).
    pub tenant_per_second: f64,
    /// Burst for a tenant.
    pub tenant_burst: f64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            user_per_minute: 60.0,
            user_burst: 30.0,
            tenant_per_second: 20_000.0,
            tenant_burst: 40_000.0,
        }
    }
}

/// Which limit refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// The user's.
    User,
    /// The tenant's.
    Tenant,
}

impl Scope {
    /// As in the HTTP body and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::User => "user",
            Scope::Tenant => "tenant",
        }
    }
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn take(&mut self, now: Instant, rate_per_sec: f64, burst: f64) -> Result<(), u64> {
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + dt * rate_per_sec).min(burst);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err((((1.0 - self.tokens) / rate_per_sec) * 1000.0).ceil() as u64)
        }
    }
}

const MAX_TRACKED: usize = 200_000;

/// The limiter.
pub struct RateLimiter {
    limits: Limits,
    users: Mutex<HashMap<(String, String), Bucket>>,
    tenants: Mutex<HashMap<String, Bucket>>,
}

impl RateLimiter {
    /// A limiter with `limits`.
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            users: Mutex::new(HashMap::new()),
            tenants: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one token for (tenant, user); `Err((scope, retry_after_ms))` if refused.
    ///
    /// The user's bucket is checked first: a request the user's own limit
    /// refuses spends nothing of the tenant's budget (one user over their
    /// limit cannot lock the tenant's other users out), and a request the
    /// tenant's limit refuses gets its user token back.
    pub fn check(&self, tenant: &str, user: &str) -> Result<(), (Scope, u64)> {
        let now = Instant::now();
        let l = self.limits;
        let mut u = self.users.lock().map_err(|_| (Scope::User, 1000u64))?;
        if u.len() >= MAX_TRACKED {
            // Forget users whose bucket has refilled: they lose nothing.
            let full_after = l.user_burst / (l.user_per_minute / 60.0);
            u.retain(|_, b| now.saturating_duration_since(b.at).as_secs_f64() < full_after);
        }
        let key = (tenant.to_string(), user.to_string());
        let new_user = !u.contains_key(&key);
        let ub = u.entry(key.clone()).or_insert(Bucket {
            tokens: l.user_burst,
            at: now,
        });
        ub.take(now, l.user_per_minute / 60.0, l.user_burst)
            .map_err(|ms| (Scope::User, ms))?;
        // Lock order: users, then tenants (the only place both are held).
        let mut t = self.tenants.lock().map_err(|_| (Scope::Tenant, 1000u64))?;
        let tb = t.entry(tenant.to_string()).or_insert(Bucket {
            tokens: l.tenant_burst,
            at: now,
        });
        if let Err(ms) = tb.take(now, l.tenant_per_second, l.tenant_burst) {
            if new_user {
                // Refused before it counted: a tenant over its limit does
                // not grow the table with every new user id it sends.
                u.remove(&key);
            } else {
                ub.tokens = (ub.tokens + 1.0).min(l.user_burst);
            }
            return Err((Scope::Tenant, ms));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_user_gets_the_burst_then_is_refused_without_touching_others() {
        let r = RateLimiter::new(Limits {
            user_per_minute: 60.0,
            user_burst: 30.0,
            ..Limits::default()
        });
        for _ in 0..30 {
            assert!(r.check("app", "alice").is_ok());
        }
        let (scope, ms) = r.check("app", "alice").unwrap_err();
        assert_eq!(scope, Scope::User);
        assert!(ms > 0 && ms <= 1000, "{ms}");
        assert!(r.check("app", "bob").is_ok());
    }

    #[test]
    fn the_tenant_limit_is_separate() {
        let r = RateLimiter::new(Limits {
            tenant_per_second: 1.0,
            tenant_burst: 2.0,
            ..Limits::default()
        });
        assert!(r.check("app", "a").is_ok());
        assert!(r.check("app", "b").is_ok());
        assert_eq!(r.check("app", "c").unwrap_err().0, Scope::Tenant);
        assert!(r.check("other", "c").is_ok());
    }

    #[test]
    fn a_user_refused_by_their_own_limit_spends_no_tenant_budget() {
        let r = RateLimiter::new(Limits {
            user_per_minute: 1.0,
            user_burst: 2.0,
            tenant_per_second: 0.01,
            tenant_burst: 40.0,
        });
        let mut ok = 0;
        for _ in 0..50 {
            match r.check("app", "a") {
                Ok(()) => ok += 1,
                Err((scope, _)) => assert_eq!(scope, Scope::User),
            }
        }
        assert_eq!(ok, 2);
        // The tenant spent 2 of 40: 38 other users get in.
        for i in 0..38 {
            assert!(r.check("app", &format!("u{i}")).is_ok(), "u{i}");
        }
        assert_eq!(r.check("app", "late").unwrap_err().0, Scope::Tenant);
        // Refused by the tenant's limit, a new user id is not tracked.
        let tracked = r.users.lock().unwrap().len();
        for i in 0..100 {
            assert!(r.check("app", &format!("n{i}")).is_err());
        }
        assert_eq!(r.users.lock().unwrap().len(), tracked);
        // Refused by the tenant: the user's token came back.
        assert_eq!(r.check("app", "late").unwrap_err().0, Scope::Tenant);
        // Refused by the tenant's limit, a new user id is not tracked.
        let tracked = r.users.lock().unwrap().len();
        for i in 0..100 {
            assert!(r.check("app", &format!("n{i}")).is_err());
        }
        assert_eq!(r.users.lock().unwrap().len(), tracked);
    }
}
