// Drives the official @durable-streams/client against an agentsync server, one step per
// run (tests/durable_streams/test_clients.py runs the steps, SIGKILLing the server between
// two of them). Every step prints one JSON line per result on stdout and exits 0, or
// prints the error on stderr and exits 1; it gives up after DEADLINE_MS.
//
//   node interop.mjs write  URL N            create a JSON stream, N producer appends, read
//   node interop.mjs resume URL OFFSET N     after a restart: N more appends (next epoch),
//                                            read from OFFSET, fence the old epoch
//   node interop.mjs tail   URL TOKEN MODE N read a session from the start, live (MODE is
//                                            long-poll or sse), until it has N items
import {
  DurableStream,
  IdempotentProducer,
  stream,
} from "@durable-streams/client"

const DEADLINE_MS = 20_000
const PRODUCER = "js-producer"
const BATCH = 5

setTimeout(() => {
  console.error(`interop.mjs: no result within ${DEADLINE_MS} ms`)
  process.exit(2)
}, DEADLINE_MS).unref()

const emit = (obj) => console.log(JSON.stringify(obj))

async function readAll(url, offset) {
  const res = await stream({ url, offset, live: false })
  const items = await res.json()
  return { items, offset: res.offset, upToDate: res.upToDate }
}

async function produce(handle, epoch, values) {
  const errors = []
  const producer = new IdempotentProducer(handle, PRODUCER, {
    epoch,
    lingerMs: 1,
    onError: (e) => errors.push(`${e.name}: ${e.message}`),
  })
  for (const [i, value] of values.entries()) {
    producer.append(JSON.stringify(value))
    if (i % BATCH === BATCH - 1) await producer.flush() // one POST per BATCH values
  }
  await producer.flush()
  await producer.detach()
  if (errors.length) throw new Error(`producer errors: ${errors.join("; ")}`)
}

async function write(url, n) {
  const handle = await DurableStream.create({ url, contentType: "application/json" })
  const values = Array.from({ length: n }, (_, i) => ({ phase: 1, n: i }))
  await produce(handle, 0, values)
  const all = await readAll(url) // its offset is the resume point of the next run
  emit({ step: "write", ...all })
}

async function resume(url, offset, n) {
  const handle = await DurableStream.connect({ url })
  // A restarted producer claims the next epoch and starts again at seq 0.
  const values = Array.from({ length: n }, (_, i) => ({ phase: 2, n: i }))
  await produce(handle, 1, values)
  const rest = await readAll(url, offset)
  const all = await readAll(url)
  // The old epoch is fenced: a zombie of the first run cannot append any more.
  const fenced = []
  const zombie = new IdempotentProducer(handle, PRODUCER, {
    epoch: 0,
    onError: (e) => fenced.push(e.name),
  })
  zombie.append(JSON.stringify({ zombie: true }))
  await zombie.flush().catch((e) => fenced.push(e.name))
  const after = await readAll(url)
  emit({ step: "resume", rest, all, fenced, afterZombie: after.items.length })
}

async function tail(url, token, mode, n) {
  const items = []
  const res = await stream({
    url,
    offset: "-1",
    live: mode,
    headers: { Authorization: `Bearer ${token}` },
  })
  await new Promise((resolve, reject) => {
    const unsubscribe = res.subscribeJson(async (batch) => {
      items.push(...batch.items)
      emit({ batch: batch.items.length, offset: batch.offset, upToDate: batch.upToDate })
      if (items.length >= n) {
        unsubscribe()
        res.cancel()
        resolve()
      }
    })
    // A terminal error (401, 410...) ends the session: fail instead of waiting.
    res.closed.then(() => reject(new Error("the session ended early")), reject)
  })
  emit({ step: "tail", items, offset: res.offset })
}

const [command, ...args] = process.argv.slice(2)
try {
  if (command === "write") await write(args[0], Number(args[1]))
  else if (command === "resume") await resume(args[0], args[1], Number(args[2]))
  else if (command === "tail") await tail(args[0], args[1], args[2], Number(args[3]))
  else throw new Error(`unknown command ${command}`)
  process.exit(0)
} catch (e) {
  console.error(`interop.mjs ${command}: ${e?.stack ?? e}`)
  process.exit(1)
}
