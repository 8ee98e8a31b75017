/// The replies of recent mutations per client session (DESIGN.md §4.3). It is
/// rebuilt from the journal on replay, so a request re-sent to a restarted or
/// promoted server gets its first reply instead of running twice.
struct ReplyCache: Hashable, Sendable {
    /// Limits keep a misbehaving or vanished client from growing it without bound.
    static let maxRepliesPerSession = 4096
    static let maxSessions = 4096

    private var sessions: [UInt64: Session] = [:]

    struct Session: Hashable, Sendable {
        var replies: [UInt64: Reply] = [:]
        /// Request sequences in arrival order, oldest first, for eviction.
        var order: [UInt64] = []
        var orderStart = 0
        /// The journal sequence of the last mutation of this session, for LRU eviction of sessions.
        var lastUsed: UInt64 = 0
    }

    func reply(session: UInt64, request: UInt64) -> Reply? {
        sessions[session]?.replies[request]
    }

    mutating func remember(_ reply: Reply, session: UInt64, request: UInt64, at journalSequence: UInt64) {
        if sessions[session] == nil, sessions.count >= Self.maxSessions,
           let oldest = sessions.min(by: { ($0.value.lastUsed, $0.key) < ($1.value.lastUsed, $1.key) })?.key {
            sessions.removeValue(forKey: oldest)
        }
        sessions[session, default: Session()].insert(reply, request: request, at: journalSequence)
    }

    /// The client has every reply below `request`: they need not be kept.
    mutating func forget(session: UInt64, below request: UInt64) {
        sessions[session]?.forget(below: request)
    }

    var count: Int { sessions.values.reduce(0) { $0 + $1.replies.count } }

    func encode(to w: inout ByteWriter) {
        w.write(UInt32(sessions.count))
        for (id, session) in sessions.sorted(by: { $0.key < $1.key }) {
            w.write(id)
            w.write(session.lastUsed)
            let live = session.order[session.orderStart...].filter { session.replies[$0] != nil }
            w.write(UInt32(live.count))
            for request in live {
                w.write(request)
                session.replies[request]!.encode(to: &w)
            }
        }
    }

    static func decode(from r: inout ByteReader) throws(DecodeError) -> ReplyCache {
        var cache = ReplyCache()
        let sessionCount = try r.readUInt32()
        for _ in 0..<sessionCount {
            let id = try r.readUInt64()
            var session = Session()
            session.lastUsed = try r.readUInt64()
            let count = try r.readUInt32()
            for _ in 0..<count {
                let request = try r.readUInt64()
                session.replies[request] = try Reply.decode(from: &r)
                session.order.append(request)
            }
            cache.sessions[id] = session
        }
        return cache
    }
}

extension ReplyCache.Session {
    /// Equal when they hold the same replies (the eviction order's bookkeeping does not count).
    static func == (a: Self, b: Self) -> Bool { a.replies == b.replies && a.lastUsed == b.lastUsed }

    func hash(into hasher: inout Hasher) {
        hasher.combine(replies)
        hasher.combine(lastUsed)
    }

    mutating func insert(_ reply: Reply, request: UInt64, at journalSequence: UInt64) {
        if replies.updateValue(reply, forKey: request) == nil { order.append(request) }
        lastUsed = journalSequence
        while replies.count > ReplyCache.maxRepliesPerSession, orderStart < order.count {
            replies.removeValue(forKey: order[orderStart])
            orderStart += 1
        }
        compact()
    }

    mutating func forget(below request: UInt64) {
        while orderStart < order.count, order[orderStart] < request {
            replies.removeValue(forKey: order[orderStart])
            orderStart += 1
        }
        compact()
    }

    private mutating func compact() {
        if orderStart > 1024, orderStart * 2 > order.count {
            order.removeFirst(orderStart)
            orderStart = 0
        }
    }
}
