//! A real DNS server on loopback whose records a test changes while it runs.
//!
//! It speaks the DNS wire protocol over UDP and TCP on one port of 127.0.0.1, answering A, AAAA
//! and SRV queries authoritatively from a table: records with their TTLs, NOERROR with no records
//! (and the zone's SOA) for a name that exists without records of the type asked for, and
//! NXDOMAIN with the SOA for a name it does not know. A name can be made to fail with SERVFAIL or
//! with a malformed (cut short) answer until the test heals it.
//!
//! Messages are encoded with `hickory-proto` directly rather than through `hickory-server`, so
//! that a test can send answers no well-behaved server would.

use std::collections::HashMap;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, SOA, SRV};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::Notify;
use tokio::task::JoinSet;

/// The TTL of the SOA record sent with negative answers, and so how long a resolver may believe
/// them (RFC 2308). Short, so that a name that comes back is seen soon.
pub const NEGATIVE_TTL: u32 = 1;

/// A DNS server on 127.0.0.1 (UDP and TCP on the same port) serving a table the test edits.
///
/// Stops when dropped.
#[derive(Debug)]
pub struct DnsServer {
    addr: SocketAddr,
    zone: Arc<Mutex<Zone>>,
    queried: Arc<Notify>,
    _tasks: JoinSet<()>,
}

/// One SRV record: where a service instance is and its share of the traffic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Srv {
    /// Lower values are preferred; higher ones are fallbacks.
    pub priority: u16,
    /// The relative share among records of the same priority.
    pub weight: u16,
    /// The port the instance listens on.
    pub port: u16,
    /// The host name whose A/AAAA records give the instance's addresses.
    pub target: String,
}

impl Srv {
    /// An SRV record pointing at `port` on `target`.
    pub fn new(priority: u16, weight: u16, port: u16, target: &str) -> Self {
        Self {
            priority,
            weight,
            port,
            target: target.to_owned(),
        }
    }
}

/// A way of failing every query for a name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Answer with response code SERVFAIL.
    ServFail,
    /// Answer with a response whose header promises an answer record that is cut off midway.
    Malformed,
}

#[derive(Debug)]
struct Zone {
    /// Records by lower-cased, fully qualified name and type. A name that is present with no
    /// records of a type answers NOERROR without records for that type.
    names: HashMap<Name, HashMap<RecordType, Vec<Record>>>,
    faults: HashMap<Name, Fault>,
    queries: HashMap<Name, u64>,
    glue: bool,
    truncate_udp: bool,
}

impl DnsServer {
    /// Starts a server with an empty table, sending glue records with SRV answers.
    pub async fn start() -> io::Result<Self> {
        let (udp, tcp) = bind_pair().await?;
        let addr = udp.local_addr()?;
        let zone = Arc::new(Mutex::new(Zone {
            names: HashMap::new(),
            faults: HashMap::new(),
            queries: HashMap::new(),
            glue: true,
            truncate_udp: false,
        }));
        let queried = Arc::new(Notify::new());
        let mut tasks = JoinSet::new();
        tasks.spawn(serve_udp(udp, Arc::clone(&zone), Arc::clone(&queried)));
        tasks.spawn(serve_tcp(tcp, Arc::clone(&zone), Arc::clone(&queried)));
        Ok(Self {
            addr,
            zone,
            queried,
            _tasks: tasks,
        })
    }

    /// The address to give a resolver as its name server.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Replaces the A records of `name`. An empty list leaves the name existing with no A records.
    pub fn set_a(&self, name: &str, ttl: u32, addrs: &[Ipv4Addr]) {
        let name = fqdn(name);
        let records = addrs
            .iter()
            .map(|addr| Record::from_rdata(name.clone(), ttl, RData::A(A(*addr))))
            .collect();
        self.set(name, RecordType::A, records);
    }

    /// Replaces the AAAA records of `name`. An empty list leaves the name existing with no AAAA
    /// records.
    pub fn set_aaaa(&self, name: &str, ttl: u32, addrs: &[Ipv6Addr]) {
        let name = fqdn(name);
        let records = addrs
            .iter()
            .map(|addr| Record::from_rdata(name.clone(), ttl, RData::AAAA(AAAA(*addr))))
            .collect();
        self.set(name, RecordType::AAAA, records);
    }

    /// Replaces the SRV records of `name`. An empty list leaves the name existing with no SRV
    /// records.
    pub fn set_srv(&self, name: &str, ttl: u32, records: &[Srv]) {
        let name = fqdn(name);
        let records = records
            .iter()
            .map(|srv| {
                let target = SRV::new(srv.priority, srv.weight, srv.port, fqdn(&srv.target));
                Record::from_rdata(name.clone(), ttl, RData::SRV(target))
            })
            .collect();
        self.set(name, RecordType::SRV, records);
    }

    /// Removes every record of `name`: queries for it are answered NXDOMAIN.
    pub fn remove(&self, name: &str) {
        self.zone().names.remove(&fqdn(name));
    }

    /// Fails every query for `name` with `fault` until [`DnsServer::heal`] is called.
    pub fn fail(&self, name: &str, fault: Fault) {
        self.zone().faults.insert(fqdn(name), fault);
    }

    /// Answers queries for `name` from the table again.
    pub fn heal(&self, name: &str) {
        self.zone().faults.remove(&fqdn(name));
    }

    /// Whether SRV answers carry the targets' A/AAAA records in their additional section
    /// (default yes). Without them the resolver has to look each target up.
    pub fn set_glue(&self, glue: bool) {
        self.zone().glue = glue;
    }

    /// Whether every answer over UDP is sent empty with the TC (truncated) bit set, as a server
    /// does when an answer does not fit in a datagram, so that clients must ask again over TCP.
    pub fn set_truncate_udp(&self, truncate: bool) {
        self.zone().truncate_udp = truncate;
    }

    /// How many queries for `name` (of any type, over either transport) have been received.
    pub fn queries(&self, name: &str) -> u64 {
        self.zone().queries.get(&fqdn(name)).copied().unwrap_or(0)
    }

    /// Waits until at least `count` queries for `name` have been received.
    pub async fn wait_for_queries(&self, name: &str, count: u64) {
        loop {
            // Created before the check, so a query answered in between still wakes it.
            let queried = self.queried.notified();
            if self.queries(name) >= count {
                return;
            }
            queried.await;
        }
    }

    fn set(&self, name: Name, record_type: RecordType, records: Vec<Record>) {
        self.zone()
            .names
            .entry(name)
            .or_default()
            .insert(record_type, records);
    }

    fn zone(&self) -> MutexGuard<'_, Zone> {
        self.zone.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// `name` as the table keys it: fully qualified and lower-cased.
///
/// Panics on a string that is not a DNS name, since that is a mistake in the test itself.
fn fqdn(name: &str) -> Name {
    let mut parsed =
        Name::from_utf8(name).unwrap_or_else(|error| panic!("{name:?} is not a DNS name: {error}"));
    parsed.set_fqdn(true);
    parsed.to_lowercase()
}

/// A UDP socket and a TCP listener on the same free port of 127.0.0.1.
async fn bind_pair() -> io::Result<(UdpSocket, TcpListener)> {
    let mut last_error = None;
    // The port the OS picks for UDP may already be taken for TCP; another pick will do.
    for _ in 0..16 {
        let udp = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        match TcpListener::bind(udp.local_addr()?).await {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(error) => last_error = Some(error),
        }
    }
    Err(last_error.unwrap_or_else(|| io::Error::other("no free port for UDP and TCP")))
}

async fn serve_udp(socket: UdpSocket, zone: Arc<Mutex<Zone>>, queried: Arc<Notify>) {
    let mut buffer = vec![0; 4096];
    loop {
        let Ok((len, peer)) = socket.recv_from(&mut buffer).await else {
            continue;
        };
        if let Some(response) = respond(&buffer[..len], Transport::Udp, &zone, &queried) {
            let _ = socket.send_to(&response, peer).await;
        }
    }
}

async fn serve_tcp(listener: TcpListener, zone: Arc<Mutex<Zone>>, queried: Arc<Notify>) {
    // Connections live in the set so that stopping the server closes them too.
    let mut connections = JoinSet::new();
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(_) => continue,
            },
            Some(_) = connections.join_next() => continue,
        };
        connections.spawn(serve_connection(
            stream,
            Arc::clone(&zone),
            Arc::clone(&queried),
        ));
    }
}

/// Answers length-prefixed messages (RFC 1035 §4.2.2) until the client closes the connection.
async fn serve_connection(mut stream: TcpStream, zone: Arc<Mutex<Zone>>, queried: Arc<Notify>) {
    loop {
        let Ok(len) = stream.read_u16().await else {
            return;
        };
        let mut request = vec![0; usize::from(len)];
        if stream.read_exact(&mut request).await.is_err() {
            return;
        }
        let Some(response) = respond(&request, Transport::Tcp, &zone, &queried) else {
            continue;
        };
        let Ok(len) = u16::try_from(response.len()) else {
            return;
        };
        let mut framed = Vec::with_capacity(response.len() + 2);
        framed.extend_from_slice(&len.to_be_bytes());
        framed.extend_from_slice(&response);
        if stream.write_all(&framed).await.is_err() {
            return;
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Transport {
    Udp,
    Tcp,
}

/// The encoded answer to one request; `None` for bytes that are not a DNS query at all.
fn respond(
    request: &[u8],
    transport: Transport,
    zone: &Mutex<Zone>,
    queried: &Notify,
) -> Option<Vec<u8>> {
    let request = Message::from_vec(request).ok()?;
    let query = request.queries.first()?.clone();
    let name = query.name().to_lowercase();

    let mut response = Message::response(request.id, request.op_code);
    response.metadata.authoritative = true;
    response.metadata.recursion_desired = request.recursion_desired;
    response.add_queries(request.queries.iter().cloned());

    let fault = {
        let mut zone = zone.lock().unwrap_or_else(PoisonError::into_inner);
        *zone.queries.entry(name.clone()).or_default() += 1;
        let fault = zone.faults.get(&name).copied();
        if transport == Transport::Udp && zone.truncate_udp {
            response.metadata.truncation = true;
        } else if fault.is_none() {
            answer(&zone, &name, query.query_type(), &mut response);
        }
        fault
    };
    queried.notify_waiters();

    // Records go out under the name as asked, whatever its case.
    for record in &mut response.answers {
        if record.name == name {
            record.name = query.name().clone();
        }
    }
    match fault {
        None => response.to_vec().ok(),
        Some(Fault::ServFail) => {
            response.metadata.response_code = ResponseCode::ServFail;
            response.to_vec().ok()
        }
        Some(Fault::Malformed) => {
            response.add_answer(Record::from_rdata(
                query.name().clone(),
                60,
                RData::A(A(Ipv4Addr::new(192, 0, 2, 1))),
            ));
            let mut bytes = response.to_vec().ok()?;
            // Cuts the answer's address in half: the header still counts one answer record.
            bytes.truncate(bytes.len() - 2);
            Some(bytes)
        }
    }
}

/// Fills `response` from the table.
fn answer(zone: &Zone, name: &Name, record_type: RecordType, response: &mut Message) {
    let Some(records) = zone.names.get(name) else {
        response.metadata.response_code = ResponseCode::NXDomain;
        response.add_authority(soa());
        return;
    };
    let found = records.get(&record_type).map_or(&[][..], Vec::as_slice);
    if found.is_empty() {
        response.add_authority(soa());
        return;
    }
    response.add_answers(found.iter().cloned());
    if record_type == RecordType::SRV && zone.glue {
        for record in found {
            let RData::SRV(srv) = &record.data else {
                continue;
            };
            let Some(target) = zone.names.get(&srv.target) else {
                continue;
            };
            for address_type in [RecordType::A, RecordType::AAAA] {
                if let Some(addresses) = target.get(&address_type) {
                    response.add_additionals(addresses.iter().cloned());
                }
            }
        }
    }
}

/// The SOA record that makes a negative answer authoritative (RFC 2308 §3).
fn soa() -> Record {
    let server = Name::from_ascii("ns.mesh.test.").expect("valid name");
    let contact = Name::from_ascii("hostmaster.mesh.test.").expect("valid name");
    let soa = SOA::new(server, contact, 1, 60, 60, 60, NEGATIVE_TTL);
    Record::from_rdata(Name::root(), NEGATIVE_TTL, RData::SOA(soa))
}
