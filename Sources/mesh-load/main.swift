import Dispatch
import Foundation
import Glibc
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import SidecarTLS

// bench/rotation.sh's load tool. Two roles:
//   mesh-load echo PORT
//       an echo backend on 127.0.0.1:PORT (half-close carried back)
//   mesh-load run PORT [--streams 8] [--bytes 2147483648] [--duration 600] [--rotate-at 300]
//                      [--rotate-url URL] [--short-interval-ms 50] [--report-every 10]
//       keeps STREAMS bulk streams of BYTES each running through PORT (each echoed back and
//       sha256-compared), one new short connection every SHORT-INTERVAL-MS, rotates the dev
//       agent's CA at ROTATE-AT seconds, and prints throughput and failures over time.

let arguments = Array(CommandLine.arguments.dropFirst())

func option(_ name: String, _ fallback: Int) -> Int {
    guard let index = arguments.firstIndex(of: name), index + 1 < arguments.count, let value = Int(arguments[index + 1]) else {
        return fallback
    }
    return value
}

func stringOption(_ name: String) -> String? {
    guard let index = arguments.firstIndex(of: name), index + 1 < arguments.count else { return nil }
    return arguments[index + 1]
}

func fail(_ message: String) -> Never {
    FileHandle.standardError.write(Data("mesh-load: \(message)\n".utf8))
    exit(2)
}

// MARK: - Echo backend

final class EchoHandler: ChannelInboundHandler, Sendable {
    typealias InboundIn = ByteBuffer
    func channelRead(context: ChannelHandlerContext, data: NIOAny) { context.write(data, promise: nil) }
    func channelReadComplete(context: ChannelHandlerContext) { context.flush() }
    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        // After the client's EOF: close once every echoed byte is written (closing the output
        // right away would drop writes still queued).
        guard event as? ChannelEvent == .inputClosed else { return }
        let channel = context.channel
        context.writeAndFlush(NIOAny(channel.allocator.buffer(capacity: 0))).whenComplete { _ in channel.close(promise: nil) }
    }
    func errorCaught(context: ChannelHandlerContext, error: Error) { context.close(promise: nil) }
}

func runEcho(port: Int) throws -> Never {
    let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
    let channel = try ServerBootstrap(group: group)
        .serverChannelOption(ChannelOptions.socketOption(.so_reuseaddr), value: 1)
        // bench/scale.sh: with the mux, thousands of tunnels reach the backend within a second
        // (no handshake pacing them); a short backlog drops SYNs and a 1 s retransmit follows.
        .serverChannelOption(ChannelOptions.backlog, value: 4096)
        .childChannelOption(ChannelOptions.allowRemoteHalfClosure, value: true)
        .childChannelInitializer { $0.pipeline.addHandler(EchoHandler()) }
        .bind(host: "127.0.0.1", port: port).wait()
    print("echo backend on \(channel.localAddress.map { "\($0)" } ?? "?")")
    try channel.closeFuture.wait()
    exit(0)
}

// MARK: - Load

func connectSocket(port: Int) -> Int32? {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    guard fd >= 0 else { return nil }
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_port = in_port_t(UInt16(port).bigEndian)
    inet_pton(AF_INET, "127.0.0.1", &address.sin_addr)
    let result = withUnsafePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
    }
    guard result == 0 else { close(fd); return nil }
    var timeout = timeval(tv_sec: 60, tv_usec: 0)
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
    return fd
}

/// Counters shared by all workers, read by the reporter.
struct Totals {
    var echoedBytes = 0
    var streamsOK = 0
    var streamsFailed = 0
    var bytesLost = 0
    var shortOK = 0
    var shortFailed = 0
}

let totals = NIOLockedValueBox(Totals())

/// Sends `bytes` (a random 1 MiB block with a per-chunk counter stamped in, so no two chunks
/// are equal) and reads the echo; true when both sha256 digests match.
func bulkStream(port: Int, bytes: Int, block: [UInt8]) -> Bool {
    guard let fd = connectSocket(port: port) else { return false }
    defer { close(fd) }
    // The sender thread owns its digest and hands over the result when it is done.
    let sentHex = NIOLockedValueBox("")
    let senderDone = DispatchSemaphore(value: 0)
    let sender = Thread {
        let sentDigest = SHA256Digest()
        defer {
            sentHex.withLockedValue { $0 = sentDigest.finalizeHex() }
            senderDone.signal()
        }
        var chunk = block
        var sent = 0
        var counter: UInt64 = 0
        while sent < bytes {
            counter += 1
            withUnsafeBytes(of: counter) { stamp in for (i, byte) in stamp.enumerated() { chunk[i] = byte } }
            let length = min(chunk.count, bytes - sent)
            chunk.withUnsafeBytes { sentDigest.update(UnsafeRawBufferPointer(rebasing: $0[0..<length])) }
            var offset = 0
            while offset < length {
                let written = chunk.withUnsafeBytes { send(fd, $0.baseAddress! + offset, length - offset, Int32(MSG_NOSIGNAL)) }
                if written <= 0 { shutdown(fd, Int32(SHUT_RDWR)); return }
                offset += written
            }
            sent += length
        }
        shutdown(fd, Int32(SHUT_WR))
    }
    sender.start()
    let receivedDigest = SHA256Digest()
    var buffer = [UInt8](repeating: 0, count: 1 << 20)
    var received = 0
    var clean = false
    while true {
        let count = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
        if count == 0 { clean = true; break }
        if count < 0 { break }
        buffer.withUnsafeBytes { receivedDigest.update(UnsafeRawBufferPointer(rebasing: $0[0..<count])) }
        received += count
        totals.withLockedValue { $0.echoedBytes += count }
    }
    if !clean { shutdown(fd, Int32(SHUT_RDWR)) }  // unblock a sender stuck on a dead connection
    senderDone.wait()
    let ok = clean && received == bytes && receivedDigest.finalizeHex() == sentHex.withLockedValue { $0 }
    totals.withLockedValue {
        if ok { $0.streamsOK += 1 } else { $0.streamsFailed += 1; $0.bytesLost += bytes - received }
    }
    return ok
}

func shortConnection(port: Int) -> Bool {
    guard let fd = connectSocket(port: port) else { return false }
    defer { close(fd) }
    let payload = secureRandomBytes(4096)
    guard payload.withUnsafeBytes({ send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }) == payload.count else { return false }
    shutdown(fd, Int32(SHUT_WR))
    var echoed: [UInt8] = []
    var buffer = [UInt8](repeating: 0, count: 8192)
    while true {
        let count = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
        if count == 0 { break }
        if count < 0 { return false }
        echoed += buffer[0..<count]
    }
    return echoed == payload
}

func runLoad(port: Int) -> Never {
    let streams = option("--streams", 8)
    let bytes = option("--bytes", 2 << 30)
    let duration = Double(option("--duration", 600))
    let rotateAt = Double(option("--rotate-at", Int(duration / 2)))
    let shortInterval = option("--short-interval-ms", 50)
    let reportEvery = Double(option("--report-every", 10))
    let rotateURL = stringOption("--rotate-url")
    let block = secureRandomBytes(1 << 20)
    let start = Date()
    func elapsed() -> Double { Date().timeIntervalSince(start) }
    let running = NIOLockedValueBox(true)
    var workers: [Thread] = []
    for _ in 0..<streams {
        let worker = Thread { while running.withLockedValue({ $0 }) { _ = bulkStream(port: port, bytes: bytes, block: block) } }
        worker.start()
        workers.append(worker)
    }
    let shortWorker = Thread {
        while running.withLockedValue({ $0 }) {
            let ok = shortConnection(port: port)
            totals.withLockedValue { if ok { $0.shortOK += 1 } else { $0.shortFailed += 1 } }
            usleep(useconds_t(shortInterval * 1000))
        }
    }
    shortWorker.start()
    workers.append(shortWorker)

    print(String(format: "%6@ %10@ %9@ %9@ %11@ %12@", "t_s", "MB/s", "streams", "failed", "short_ok", "short_failed"))
    var rotated = rotateURL == nil
    var lastBytes = 0, lastTime = 0.0
    var before: (bytes: Int, seconds: Double) = (0, 0), during: (bytes: Int, seconds: Double) = (0, 0)
    while elapsed() < duration {
        Thread.sleep(forTimeInterval: min(reportEvery, duration - elapsed()))
        if !rotated && elapsed() >= rotateAt, let rotateURL {
            let curl = Process()
            curl.executableURL = URL(fileURLWithPath: "/usr/bin/curl")
            curl.arguments = ["-sS", "--fail", "-X", "PUT", "--data", #"{"Provider":"consul","Config":{"GenerateNewKey":true}}"#, rotateURL]
            curl.standardOutput = FileHandle.nullDevice
            try? curl.run()
            curl.waitUntilExit()
            print(String(format: "%6.0f CA rotated (curl exit %d)", elapsed(), curl.terminationStatus))
            rotated = true
        }
        let now = elapsed(), snapshot = totals.withLockedValue { $0 }
        let rate = Double(snapshot.echoedBytes - lastBytes) / (now - lastTime) / 1e6
        // "During" = from the rotation to the end: renewals run all along, the CA change once.
        if rotated && rotateURL != nil && lastTime >= rotateAt {
            during.bytes += snapshot.echoedBytes - lastBytes; during.seconds += now - lastTime
        } else {
            before.bytes += snapshot.echoedBytes - lastBytes; before.seconds += now - lastTime
        }
        print(String(format: "%6.0f %10.1f %9d %9d %11d %12d", now, rate, snapshot.streamsOK, snapshot.streamsFailed,
                     snapshot.shortOK, snapshot.shortFailed))
        lastBytes = snapshot.echoedBytes
        lastTime = now
    }
    running.withLockedValue { $0 = false }
    // Streams in flight finish (or fail) before the summary.
    while workers.contains(where: \.isExecuting) { Thread.sleep(forTimeInterval: 0.1) }
    let final = totals.withLockedValue { $0 }
    print("")
    print("streams completed: \(final.streamsOK) ok, \(final.streamsFailed) failed; bytes lost: \(final.bytesLost)")
    print("short connections: \(final.shortOK) ok, \(final.shortFailed) failed")
    print(String(format: "throughput before the CA rotation: %.1f MB/s; from the rotation on: %.1f MB/s (echoed bytes, both ways through both sidecars)",
                 before.seconds > 0 ? Double(before.bytes) / before.seconds / 1e6 : 0,
                 during.seconds > 0 ? Double(during.bytes) / during.seconds / 1e6 : 0))
    exit(final.streamsFailed == 0 && final.shortFailed == 0 ? 0 : 1)
}

guard arguments.count >= 2, let port = Int(arguments[1]) else {
    fail("usage: mesh-load echo PORT | mesh-load run PORT [options]")
}
switch arguments[0] {
case "echo": try runEcho(port: port)
case "run": runLoad(port: port)
default: fail("unknown role \(arguments[0]) (echo or run)")
}
