//! The connection side of a load thread ([`super::Sim`]): opening the next broker of the
//! list, failing over when a connection is lost or a subscription refused, subscribing
//! after each CONNACK and logging in again, once every SUBACK granted the subscriptions,
//! whatever was in flight. Stale events of an earlier connection are dropped here.
//!
//! It never publishes without a connection whose subscriptions are in place, and never
//! retries a broker in a busy loop ([`RETRY_DELAY`]).

use std::time::{Duration, Instant};

use super::super::link::{Inbound as Net, Link, LinkOptions, RETRY_DELAY};
use super::{FILTERS_PER_SUBSCRIBE, Sim, State, Subscribe};
use crate::error::{Error, Result};

impl Sim<'_> {
    /// Connects (in the background) to broker `i` of the list as a new generation.
    pub(super) fn open(&mut self, i: usize) -> Result<()> {
        let i = i % self.spec.brokers.len().max(1);
        let (host, port) = self
            .spec
            .brokers
            .get(i)
            .ok_or_else(|| Error::Device("no broker to connect to".into()))?;
        self.generation += 1;
        let opts = LinkOptions {
            client_id: &self.client_id,
            inflight: u16::try_from(self.spec.window.clamp(16, 4096) * 2).unwrap_or(u16::MAX),
            name: &format!("load-{}", self.spec.index),
        };
        self.link = Some(Link::open(
            &opts,
            (host, *port),
            i,
            self.generation,
            self.tx.clone(),
        )?);
        Ok(())
    }

    /// The current connection failed: close it and schedule the next broker (at once if
    /// it had been up, after [`RETRY_DELAY`] if it never came up).
    pub(super) fn on_lost(&mut self) {
        let Some(mut link) = self.link.take() else {
            return;
        };
        link.close();
        let next = link.broker + 1;
        let delay = if link.up { Duration::ZERO } else { RETRY_DELAY };
        if link.up && self.spec.brokers.len() > 1 {
            self.result.failovers += 1;
        }
        self.reopen_at = Some((Instant::now() + delay, next));
    }

    /// Connected and subscribed: logins may go out.
    pub(super) fn connected(&self) -> bool {
        self.link.as_ref().is_some_and(|l| l.up && l.subscribed)
    }

    /// Opens the next connection when its time has come.
    pub(super) fn reopen(&mut self) -> Result<()> {
        if let Some((at, next)) = self.reopen_at
            && Instant::now() >= at
        {
            self.reopen_at = None;
            self.open(next)?;
        }
        Ok(())
    }

    /// One event of a connection; events of an earlier connection are dropped.
    pub(super) fn on_inbound(&mut self, (generation, msg): (u64, Net)) -> Result<()> {
        if self.link.as_ref().map(|l| l.generation) != Some(generation) {
            return Ok(()); // an earlier connection's
        }
        match msg {
            Net::Connected => {
                if let Some(l) = self.link.as_mut() {
                    l.up = true;
                }
                self.on_connected()
            }
            Net::SubAck { refused } => self.on_suback(refused),
            Net::Publish(topic, payload) => self.on_publish(&topic, &payload),
            Net::Lost(why) => {
                self.result.last_lost = why;
                self.on_lost();
                Ok(())
            }
        }
    }

    /// CONNACK: subscribe (in batches of [`FILTERS_PER_SUBSCRIBE`]); logins wait for the
    /// SUBACKs.
    pub(super) fn on_connected(&mut self) -> Result<()> {
        let reconnect = self.connected_once;
        self.connected_once = true;
        let filters: Vec<String> = match self.spec.subscribe {
            Subscribe::Wildcard => {
                vec![format!(
                    "{}/{}/agents/+/down",
                    self.spec.prefix, self.spec.cluster
                )]
            }
            Subscribe::PerDevice => (0..self.devs.len())
                .filter(|&i| self.devs[i].state != State::Done)
                .map(|i| self.down_topic(i))
                .collect::<Result<_, _>>()?,
        };
        if reconnect {
            self.result.reconnects += 1;
        }
        if let Some(link) = self.link.as_mut() {
            for chunk in filters.chunks(FILTERS_PER_SUBSCRIBE) {
                if link.subscribe(chunk).is_err() {
                    // The connection died again: its Lost event is queued.
                    return Ok(());
                }
                link.pending_subacks += 1;
            }
            if link.pending_subacks == 0 {
                return self.on_subscribed();
            }
        }
        Ok(())
    }

    /// A SUBACK: once every SUBSCRIBE is granted, logins may go out; a refused filter
    /// closes the connection and tries the next broker after [`RETRY_DELAY`] (a device
    /// without its subscription would never hear its Challenge).
    pub(super) fn on_suback(&mut self, refused: usize) -> Result<()> {
        let Some(link) = self.link.as_mut() else {
            return Ok(());
        };
        if refused > 0 {
            self.result.refused_subscriptions += 1;
            self.result.last_lost = format!(
                "the broker refused {refused} subscription filter(s); trying the next broker"
            );
            link.up = false; // as a connection that never came up: retry after a delay
            self.on_lost();
            return Ok(());
        }
        link.pending_subacks = link.pending_subacks.saturating_sub(1);
        if link.pending_subacks == 0 && !link.subscribed {
            return self.on_subscribed();
        }
        Ok(())
    }

    /// Every subscription is in place: on a reconnect (clean session, maybe another
    /// broker) whatever was in flight is lost, so those devices log in again.
    pub(super) fn on_subscribed(&mut self) -> Result<()> {
        let Some(link) = self.link.as_mut() else {
            return Ok(());
        };
        link.subscribed = true;
        let waiting: Vec<usize> = (0..self.devs.len())
            .filter(|&i| matches!(self.devs[i].state, State::WaitChallenge | State::WaitResult))
            .collect();
        for i in waiting {
            self.login(i)?;
        }
        Ok(())
    }
}
