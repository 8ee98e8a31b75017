#if canImport(Glibc)
import Glibc
#endif
import BatonCore
import Foundation

/// A TCP connection with blocking calls and timeouts, for short exchanges
/// too rare to deserve an event loop of their own (admin requests, agents'
/// questions, the mount's first check). Plain TCP on a blocking socket, or
/// TLS (`TLSStream`) when given an identity.
public final class BlockingConnection {
    private enum Transport {
        case socket(Int32)
        case tls(TLSStream)
    }

    private let transport: Transport
    public let address: NodeAddress

    /// `connectTimeoutMilliseconds` (at most the whole timeout) bounds the
    /// connect alone: an address on a path that is down should fail fast.
    /// With `tls`, the peer must present a node certificate of the cluster's CA.
    public init(_ address: NodeAddress, timeoutMilliseconds: Int32, connectTimeoutMilliseconds: Int32? = nil,
                tls: TLSIdentity? = nil) throws {
        self.address = address
        if let tls {
            transport = .tls(try TLSStream(address, identity: tls, timeoutMilliseconds: timeoutMilliseconds,
                                           connectTimeoutMilliseconds: min(connectTimeoutMilliseconds ?? timeoutMilliseconds, timeoutMilliseconds)))
            return
        }
        var hints = addrinfo()
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        var list: UnsafeMutablePointer<addrinfo>?
        let status = getaddrinfo(address.host, String(address.port), &hints, &list)
        guard status == 0, let first = list else {
            throw ProbeError("cannot resolve \(address.host): \(String(cString: gai_strerror(status)))")
        }
        defer { freeaddrinfo(list) }
        // Owned by this local until the connect succeeds: once every stored
        // property is set, a throwing init runs deinit, which closes `fd`
        // again, and a second close reaches whatever descriptor another
        // thread opened under that number meanwhile.
        let fd = socket(first.pointee.ai_family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw ProbeError("socket: errno \(errno)") }
        func setTimeout(_ option: Int32, _ milliseconds: Int32) {
            var timeout = timeval(tv_sec: Int(milliseconds / 1000), tv_usec: Int(milliseconds % 1000) * 1000)
            setsockopt(fd, SOL_SOCKET, option, &timeout, socklen_t(MemoryLayout<timeval>.size))
        }
        setTimeout(SO_RCVTIMEO, timeoutMilliseconds)
        // connect() honours the send timeout on Linux.
        setTimeout(SO_SNDTIMEO, min(connectTimeoutMilliseconds ?? timeoutMilliseconds, timeoutMilliseconds))
        guard connect(fd, first.pointee.ai_addr, first.pointee.ai_addrlen) == 0 else {
            let reason = String(cString: strerror(errno))
            close(fd)
            throw ProbeError("connect to \(address): \(reason)")
        }
        setTimeout(SO_SNDTIMEO, timeoutMilliseconds)
        transport = .socket(fd)
    }

    deinit {
        if case .socket(let fd) = transport { close(fd) }
    }

    public func send(_ message: Message) throws {
        try send(bytes: message.frame())
    }

    /// Raw bytes, for a request of another protocol than Baton's (an HTTP scrape).
    public func send(bytes: [UInt8]) throws {
        switch transport {
        case .tls(let stream):
            try stream.send(bytes)
        case .socket(let fd):
            var done = 0
            while done < bytes.count {
                let sent = bytes.withUnsafeBytes { Glibc.send(fd, $0.baseAddress! + done, bytes.count - done, Int32(MSG_NOSIGNAL)) }
                if sent < 0 && errno == EINTR { continue }
                guard sent > 0 else { throw ProbeError("send to \(address): \(String(cString: strerror(errno)))") }
                done += sent
            }
        }
    }

    /// Everything up to the peer's end of the stream, at most `limitBytes`.
    public func receiveToEnd(limitBytes: Int) throws -> [UInt8] {
        var bytes: [UInt8] = []
        while true {
            let chunk = try receive(upTo: 64 << 10)
            if chunk.isEmpty { return bytes }
            bytes += chunk
            guard bytes.count <= limitBytes else { throw ProbeError("\(address) sent more than \(limitBytes) bytes") }
        }
    }

    /// At least one byte, at most `limit`; none at the peer's end of the stream.
    private func receive(upTo limit: Int) throws -> [UInt8] {
        switch transport {
        case .tls(let stream):
            return try stream.receive(upTo: limit)
        case .socket(let fd):
            var chunk = [UInt8](repeating: 0, count: limit)
            while true {
                let got = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
                if got < 0 && errno == EINTR { continue }
                guard got >= 0 else { throw ProbeError("no answer from \(address): \(String(cString: strerror(errno)))") }
                return Array(chunk[0..<got])
            }
        }
    }

    public func receive(limitBytes: Int = WireLimits.maxFrameBytes) throws -> Message {
        let header = try receive(count: 4)
        let length = Int(header.withUnsafeBytes { $0.loadUnaligned(as: UInt32.self).littleEndian })
        guard length <= limitBytes else { throw ProbeError("\(address) sent an oversized frame (\(length) bytes)") }
        let body = try receive(count: length)
        return try body.withUnsafeBytes { try Message.decode($0) }
    }

    private func receive(count: Int) throws -> [UInt8] {
        var bytes: [UInt8] = []
        while bytes.count < count {
            let chunk = try receive(upTo: count - bytes.count)
            guard !chunk.isEmpty else { throw ProbeError("no answer from \(address): connection closed") }
            bytes += chunk
        }
        return bytes
    }
}

extension FileHandle {
    /// One line, read byte by byte so nothing after it is consumed (a child
    /// process's first line says it is ready; the rest is its own business).
    public func readLine() -> String? {
        var bytes: [UInt8] = []
        while let byte = readData(ofLength: 1).first {
            if byte == UInt8(ascii: "\n") { return String(decoding: bytes, as: UTF8.self) }
            bytes.append(byte)
        }
        return bytes.isEmpty ? nil : String(decoding: bytes, as: UTF8.self)
    }
}
