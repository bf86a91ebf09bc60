//! What one config generation is built from and into: the components
//! shared by every generation ([`Shared`]), the public and internal
//! handlers built from a config ([`build_service`], [`build_admin`]) and
//! the per-channel history rules ([`HistoryRules`]). `app` builds the
//! first generation at start, `reload` every later one; neither module
//! is imported here.

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Weak};

use arc_swap::ArcSwap;

use crate::admin::stats::{self, Stats};
use crate::admin::{self, Admin};
use crate::backplane::Backplane;
use crate::config::{Config, RouteAction};
use crate::hub::history::HistoryLimits;
use crate::hub::message::ChannelName;
use crate::metrics::Metrics;
use crate::proxy::Proxy;
use crate::publish::Publisher;
use crate::realtime::Realtime;
use crate::router::{Router, pattern};
use crate::service::Service;
use crate::shutdown::Shutdown;

/// Components built once and shared by every config generation: a reload
/// swaps what is built from the config around them.
#[derive(Clone)]
pub(crate) struct Shared {
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) backplane: Arc<dyn Backplane>,
    pub(crate) realtime: Arc<Realtime>,
    pub(crate) shutdown: Shutdown,
    pub(crate) internal_shutdown: Shutdown,
    pub(crate) ready: Arc<AtomicBool>,
    pub(crate) stats: Arc<Stats>,
}

/// The public listeners' handler for `config`.
pub(crate) fn build_service(config: &Config, shared: &Shared) -> Service {
    Service {
        router: Router::new(&config.routes),
        proxy: Proxy::new(
            &config.upstreams,
            shared.metrics.clone(),
            shared.shutdown.clone(),
        )
        .with_grip(Arc::new(crate::grip::Grip {
            holds: crate::grip::hold::Holds {
                hub: shared.realtime.hub.clone(),
                queue: config.realtime.queue,
                on_lag: config.realtime.on_lag,
                shutdown: shared.shutdown.clone(),
            },
            max_instruct: config.limits.max_body,
        })),
        realtime: shared.realtime.clone(),
        metrics: shared.metrics.clone(),
    }
}

/// The internal listener's handler for `config`; `control` answers
/// `POST /admin/reload`.
pub(crate) fn build_admin(
    config: &Config,
    shared: &Shared,
    control: Weak<dyn admin::Reload>,
) -> Admin {
    let max_message = crate::config::largest_max_message(&config.routes, &config.realtime);
    Admin {
        ready: shared.ready.clone(),
        backplane: shared.backplane.clone(),
        metrics: shared.metrics.clone(),
        publisher: Publisher {
            backplane: shared.backplane.clone(),
            tokens: config.internal.tokens.clone(),
            max_body: config.limits.max_body,
            max_message,
            limiter: shared.realtime.limiter.clone(),
        },
        control,
        stats: shared.stats.clone(),
        routes: stats::routes(config),
        realtime: shared.realtime.clone(),
    }
}

/// History limits per channel: those of the realtime route whose channel
/// template matches the channel most specifically (most literal
/// characters; the first such route on a tie), else the defaults.
pub(crate) struct HistoryRules {
    default: HistoryLimits,
    rules: Vec<(String, HistoryLimits)>,
}

impl HistoryRules {
    pub(crate) fn new(config: &Config) -> Self {
        let default = HistoryLimits {
            messages: config.realtime.history_messages,
            max_age: config.realtime.history_max_age,
        };
        let mut rules: Vec<(String, HistoryLimits)> = Vec::new();
        for route in &config.routes {
            let RouteAction::Realtime(rt) = &route.action else {
                continue;
            };
            let limits = HistoryLimits {
                messages: rt.settings.history_messages,
                max_age: rt.settings.history_max_age,
            };
            rules.extend(rt.channels.iter().map(|t| (t.to_glob(), limits)));
            if rt.query_channels {
                rules.push(("*".to_owned(), limits));
            }
        }
        Self { default, rules }
    }

    fn limits(&self, channel: &ChannelName) -> HistoryLimits {
        let mut best: Option<(usize, HistoryLimits)> = None;
        for (glob, limits) in &self.rules {
            let literal = glob.chars().filter(|c| *c != '*').count();
            if pattern::glob(glob, channel.as_str()) && best.is_none_or(|(b, _)| literal > b) {
                best = Some((literal, *limits));
            }
        }
        best.map_or(self.default, |(_, limits)| limits)
    }
}

/// The hub's history policy: the rules of the config serving now.
pub(crate) fn history_policy(rules: Arc<ArcSwap<HistoryRules>>) -> crate::hub::HistoryPolicy {
    Box::new(move |channel: &ChannelName| rules.load().limits(channel))
}
