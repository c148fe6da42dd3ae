from agents.outbox import Outbox
from shared.schemas import ClassificationResult, Timings


def result(i: int) -> ClassificationResult:
    return ClassificationResult(
        agent_id="a1",
        image_name=f"{i}.png",
        image_sha256=f"{i:064x}",
        label="ALL",
        confidence=0.9,
        probabilities={"ALL": 0.9, "normal": 0.1},
        model_name="m",
        model_version="1.0.0",
        timings=Timings(decode_ms=1, preprocess_ms=1, inference_ms=1, total_ms=3),
    )


def test_rows_survive_reopen_in_order_until_acked(tmp_path):
    path = tmp_path / "outbox.sqlite3"
    box = Outbox(path)
    seqs = [box.put(result(i)) for i in range(5)]
    box.ack(seqs[1])
    box.close()

    box = Outbox(path)
    rows = box.after(0, 100)
    assert [r.seq for r in rows] == [seqs[0], *seqs[2:]]
    assert rows[0].topic == "leukonet/v1/agents/a1/results"
    assert ClassificationResult.model_validate_json(rows[0].payload).image_name == "0.png"
    assert box.depth() == 4
    assert [r.seq for r in box.after(seqs[2], 1)] == [seqs[3]]
    box.close()


def test_pending_moves_are_committed_with_the_result(tmp_path):
    box = Outbox(tmp_path / "o.sqlite3")
    r = result(1)
    box.put(r, source=tmp_path / "1.png")
    move = box.pending_move(tmp_path / "1.png")
    assert move is not None and move.image_sha256 == r.image_sha256 and move.result_id == str(r.result_id)
    assert [m.source for m in box.pending_moves()] == [tmp_path / "1.png"]
    box.clear_move(tmp_path / "1.png")
    assert box.pending_moves() == []
    box.close()
