import Foundation
import Glibc
import Logging
import NIOCore
import NIOPosix
import Testing
@testable import SidecarCore

/// The socket file of a unix-socket upstream across a rebind of the same path (any change to
/// the upstream rebinds it): the old listener's cleanup runs when its channel has closed, which
/// can be after the new listener has taken the path over.
@Suite("Unix listener socket files")
struct UnixListenerTests {
    static func directory() throws -> String {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("unix-listener-\(UUID().uuidString.prefix(8))").path
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        return path
    }

    static func bind(_ path: String, _ what: String) async throws -> Channel {
        let group = MultiThreadedEventLoopGroup.singleton
        return try await ListenerSocket.bindUnixSocket(ListenerSocket.bootstrap(group: group) { $0.eventLoop.makeSucceededVoidFuture() }, path: path, mode: nil,
                                                       what: what, group: group, logger: Logger(label: "test"))
    }

    static func inode(_ path: String) -> ino_t? {
        var info = stat()
        return lstat(path, &info) == 0 ? info.st_ino : nil
    }

    @Test("A closing listener removes only its own socket file, not the one a rebind put at the same path")
    func closeLeavesTheReboundFile() async throws {
        let directory = try Self.directory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let path = "\(directory)/storage.sock"
        let old = try await Self.bind(path, "old")
        // The rebind: the old file goes (as when its listener no longer answers), the new
        // listener takes the path; only then does the old channel finish closing.
        #expect(unlink(path) == 0)
        let new = try await Self.bind(path, "new")
        let newFile = try #require(Self.inode(path))
        try await old.close()
        try await old.closeFuture.get()
        #expect(Self.inode(path) == newFile, "the old listener's cleanup removed the new listener's socket file")
        let connection = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .connect(unixDomainSocketPath: path).get()
        try await connection.close()
        try await new.close()
        try await new.closeFuture.get()
        #expect(Self.inode(path) == nil, "a listener still removes its own file when it closes")
    }
}
