#if canImport(Glibc)
import Glibc
#endif
import BatonCore

/// Rungs 2 to 4 of the diagnostic ladder (DESIGN.md §6): does a host's
/// kernel answer at this address? A TCP connect is answered by the kernel
/// itself, with a reset when no process listens and with a handshake when
/// one does (even a stalled one), so either answer means reached. Silence
/// until the deadline, or "no route", means unreached. Blocking: run it off
/// any event loop.
public enum KernelProbe {
    /// A port where a listener is unlikely (discard); a listener there answers just as well.
    public static let defaultPort = 9

    public static func reaches(_ host: String, port: Int = defaultPort, deadlineMilliseconds: Int32) -> Bool {
        var hints = addrinfo()
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        var list: UnsafeMutablePointer<addrinfo>?
        guard getaddrinfo(host, String(port), &hints, &list) == 0, let first = list else { return false }
        defer { freeaddrinfo(list) }
        let fd = socket(first.pointee.ai_family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        // connect() honours the send timeout on Linux.
        var timeout = timeval(tv_sec: Int(deadlineMilliseconds / 1000), tv_usec: Int(deadlineMilliseconds % 1000) * 1000)
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        if connect(fd, first.pointee.ai_addr, first.pointee.ai_addrlen) == 0 { return true }
        return errno == ECONNREFUSED
    }
}
