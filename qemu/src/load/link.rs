//! A load thread's MQTT connection with failover over a list of brokers (the MQTT
//! listeners of a NATS cluster's nodes, or one mosquitto): rumqttc's sync client with its
//! event loop on a thread of its own that hands CONNACKs, SUBACKs and inbound publishes to
//! the device thread over a channel, tagged with the connection's generation.
//!
//! rumqttc reconnects only to the host it was built for, so a connection that fails (the
//! node died, or a connect attempt was refused) ends its event-loop thread with
//! [`Inbound::Lost`], and one whose subscription is refused is closed by the device thread
//! (without its subscription it would never hear a reply); the device thread then opens
//! the next broker of the list
//! ([`Link::open`] with the next index): at once if the connection had been up (fail over),
//! after [`RETRY_DELAY`] if it never came up (so a list of dead brokers is tried a few
//! times a second, not in a busy loop). Messages of an earlier generation are stale and
//! dropped by the caller.
//!
//! Nothing here panics on any broker input; every thread started here is joined by
//! [`Link::close`] (also on drop) unless it is stuck on a broker that stopped reading, in
//! which case it ends with its socket; closing never blocks longer than [`CLOSE_WAIT`].

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use rumqttc::{Client, Event, MqttOptions, Packet, QoS, SubscribeFilter, SubscribeReasonCode};

use crate::error::{Error, Result};

/// Largest MQTT packet either way (the harness broker's `max_packet_size`).
pub(crate) const PACKET_MAX: usize = 16 * 1024;
/// How long [`Link::close`] waits for the event-loop thread to end.
pub(crate) const CLOSE_WAIT: Duration = Duration::from_secs(2);
/// Wait before the next broker after a connect attempt that never got a CONNACK.
pub(crate) const RETRY_DELAY: Duration = Duration::from_millis(200);

/// What the event-loop thread hands the device thread.
pub(crate) enum Inbound {
    /// CONNACK: (re)subscribe.
    Connected,
    /// SUBACK: how many of its filters the broker refused (nats-server refuses an MQTT
    /// QoS 1 subscription whose JetStream consumer cannot be created, e.g. while its
    /// streams elect a new leader after a node died).
    SubAck {
        /// Refused filters.
        refused: usize,
    },
    /// A PUBLISH from the broker: topic and payload.
    Publish(String, Vec<u8>),
    /// The connection failed (the thread has ended): why.
    Lost(String),
}

/// One connection attempt to one broker of the list.
pub(crate) struct Link {
    client: Client,
    net: Option<JoinHandle<()>>,
    stop: Arc<AtomicBool>,
    /// Which generation this is (messages carry it).
    pub(crate) generation: u64,
    /// Index of the broker in the caller's list.
    pub(crate) broker: usize,
    /// Whether a CONNACK came on this connection.
    pub(crate) up: bool,
    /// SUBSCRIBE packets sent and not acknowledged yet.
    pub(crate) pending_subacks: usize,
    /// Whether every filter was granted (logins may go out).
    pub(crate) subscribed: bool,
}

/// What [`Link::open`] needs.
pub(crate) struct LinkOptions<'a> {
    /// MQTT client id (the same on every broker: a clean session each time).
    pub(crate) client_id: &'a str,
    /// Most QoS 1 publishes in flight.
    pub(crate) inflight: u16,
    /// Thread name prefix.
    pub(crate) name: &'a str,
}

impl Link {
    /// Connects (in the background) to `host:port`, broker number `broker` of the list,
    /// as generation `generation`; events go to `tx`.
    ///
    /// # Errors
    /// When the event-loop thread cannot be started.
    pub(crate) fn open(
        opts: &LinkOptions<'_>,
        (host, port): (&str, u16),
        broker: usize,
        generation: u64,
        tx: mpsc::Sender<(u64, Inbound)>,
    ) -> Result<Self> {
        let mut options = MqttOptions::new(opts.client_id, host, port);
        options
            .set_clean_session(true)
            .set_keep_alive(Duration::from_secs(30))
            .set_max_packet_size(PACKET_MAX, PACKET_MAX)
            .set_request_channel_capacity(4096)
            .set_inflight(opts.inflight);
        let (client, mut connection) = Client::new(options, 4096);
        let stop = Arc::new(AtomicBool::new(false));
        let stop_flag = Arc::clone(&stop);
        let net = thread::Builder::new()
            .name(format!("{}-mqtt-{generation}", opts.name))
            .spawn(move || {
                for event in connection.iter() {
                    if stop_flag.load(Ordering::Relaxed) {
                        break;
                    }
                    let msg = match event {
                        Ok(Event::Incoming(Packet::Publish(p))) => {
                            Inbound::Publish(p.topic, p.payload.to_vec())
                        }
                        Ok(Event::Incoming(Packet::ConnAck(_))) => Inbound::Connected,
                        Ok(Event::Incoming(Packet::SubAck(ack))) => Inbound::SubAck {
                            refused: ack
                                .return_codes
                                .iter()
                                .filter(|c| matches!(c, SubscribeReasonCode::Failure))
                                .count(),
                        },
                        Ok(_) => continue,
                        Err(e) => {
                            // rumqttc would reconnect to this same broker: end here and let
                            // the device thread choose the next one.
                            let _ = tx.send((generation, Inbound::Lost(e.to_string())));
                            break;
                        }
                    };
                    if tx.send((generation, msg)).is_err() {
                        break;
                    }
                }
            })
            .map_err(|e| Error::Device(format!("cannot start the MQTT thread: {e}")))?;
        Ok(Self {
            client,
            net: Some(net),
            stop,
            generation,
            broker,
            up: false,
            pending_subacks: 0,
            subscribed: false,
        })
    }

    /// Publishes QoS 1; an error means the connection is gone (its [`Inbound::Lost`] is
    /// on the way or already handled).
    pub(crate) fn publish(&self, topic: &str, payload: Vec<u8>) -> Result<()> {
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload)
            .map_err(|e| Error::Device(format!("publish: {e}")))
    }

    /// Subscribes QoS 1 to `filters` in one SUBSCRIBE.
    pub(crate) fn subscribe(&self, filters: &[String]) -> Result<()> {
        let batch = filters
            .iter()
            .map(|f| SubscribeFilter::new(f.clone(), QoS::AtLeastOnce));
        self.client
            .subscribe_many(batch)
            .map_err(|e| Error::Device(format!("subscribe: {e}")))
    }

    /// Asks for a DISCONNECT (without waiting for room in the request queue) and joins the
    /// event-loop thread if it ends within [`CLOSE_WAIT`]; a thread stuck on a broker that
    /// stopped reading is left to end with its socket (its events carry an old generation
    /// and are dropped; it ends at the latest when the device thread drops the channel).
    pub(crate) fn close(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.client.try_disconnect();
        if let Some(net) = self.net.take() {
            let until = std::time::Instant::now() + CLOSE_WAIT;
            while !net.is_finished() && std::time::Instant::now() < until {
                thread::sleep(Duration::from_millis(5));
            }
            if net.is_finished() {
                let _ = net.join();
            }
        }
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.close();
    }
}
