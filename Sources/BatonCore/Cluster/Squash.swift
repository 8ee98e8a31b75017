/// NFS's identity squashing, per export (issue 10): which callers a server
/// treats as the anonymous user instead of as who they say they are.
///
/// A client's root is root on its own machine, not on the export: with
/// `root` squashing (the default, as NFS's `root_squash`) uid 0 acts as
/// `anonymous`, so it cannot read or change what the export's users keep
/// from others; `all` squashes every caller (NFS's `all_squash`, for public
/// exports); `none` trusts the caller's uid (`no_root_squash`). Clients
/// named in `rootClients` (by certificate name) keep their root: the admin
/// hosts that set up an export's directories.
public struct Squash: Hashable, Sendable {
    public enum Scope: String, Hashable, Sendable, CaseIterable {
        case none
        case root
        case all
    }

    public var scope: Scope
    /// Who a squashed caller becomes (`anonuid`, `anongid`).
    public var anonymous: Credentials
    /// Patterns of client names whose root is not squashed (with `scope == .root`).
    public var rootClients: [String]

    public init(scope: Scope = .root, anonymous: Credentials = .nobody, rootClients: [String] = []) {
        self.scope = scope
        self.anonymous = anonymous
        self.rootClients = rootClients
    }

    /// NFS's default: root squashed to nobody.
    public static let rootToNobody = Squash()
    /// No squashing: the server trusts the caller's uid, as before issue 10.
    public static let trustEveryone = Squash(scope: .none)

    /// The scope for one client session: `client` is its certificate name, nil over plain TCP.
    public func scope(forClient client: String?) -> Scope {
        if scope == .root, let client, rootClients.contains(where: { ClientAccess.matches(client, $0) }) { return .none }
        return scope
    }

    /// Who a caller acts as under `scope`: the anonymous user when squashed,
    /// nil when not (the server then trusts the client's kernel, which
    /// checked permissions with the caller's every group). A request that
    /// names no caller is squashed whenever anything is.
    public func squashed(_ caller: Credentials?, scope: Scope) -> Credentials? {
        switch scope {
        case .none: return nil
        case .all: return anonymous
        case .root:
            guard let caller else { return anonymous }
            return caller.uid == 0 ? anonymous : nil
        }
    }
}

extension Operation {
    /// The operation as a squashed caller asks it: what it creates or
    /// changes belongs to `identity`, and the journal records it so.
    public func acting(as identity: Credentials) -> Operation {
        func squashed(_ c: Caller) -> Caller { Caller(uid: identity.uid, gid: identity.gid, umask: c.umask) }
        switch self {
        case .setattr(let ino, let changes, let c): return .setattr(ino, changes, squashed(c))
        case .mknod(let parent, let name, let mode, let rdev, let c):
            return .mknod(parent: parent, name: name, mode: mode, rdev: rdev, squashed(c))
        case .mkdir(let parent, let name, let mode, let c): return .mkdir(parent: parent, name: name, mode: mode, squashed(c))
        case .symlink(let parent, let name, let target, let c): return .symlink(parent: parent, name: name, target: target, squashed(c))
        case .create(let parent, let name, let mode, let flags, let c):
            return .create(parent: parent, name: name, mode: mode, flags: flags, squashed(c))
        default: return self
        }
    }
}
