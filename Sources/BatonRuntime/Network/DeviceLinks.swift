import CLinuxExtras
import Glibc

/// Whether this machine's network devices have their link, asked of the
/// kernel in this process's network namespace (one socket, SIOCGIFFLAGS):
/// cheap enough to ask every tick.
public final class DeviceLinks: @unchecked Sendable {
    private let socket: Int32

    public init?() {
        socket = Glibc.socket(AF_INET, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard socket >= 0 else { return nil }
    }

    deinit { close(socket) }

    /// Up and running (its link is there); nil when there is no such device.
    public func hasLink(_ device: String) -> Bool? {
        let flags = baton_device_flags(socket, device)
        guard flags >= 0 else { return nil }
        return flags & Int32(IFF_UP) != 0 && flags & Int32(IFF_RUNNING) != 0
    }
}
