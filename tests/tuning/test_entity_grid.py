"""The sweep grid's entity variants, their labels, and the per-type table."""
from spacy_earlyexit.tuning.grid import build_grid, dial_series, parse_entity_variants, setting_name
from spacy_earlyexit.tuning.sweep import markdown_table, per_type_scores, per_type_table


def test_entity_variants_in_the_grid() -> None:
    variants = parse_entity_variants("off,1,2", "1,0.5")
    assert variants == [None, (1, 1.0), (1, 0.5), (2, 1.0), (2, 0.5)]
    grid = build_grid(["sentence", "token"], [0.1], [0, 1], entity_variants=[None, (1, 1.0)])
    names = [setting_name(s) for s in grid]
    assert names == ["off", "sentence t=0.1", "token t=0.1 k=0", "token t=0.1 k=0 E1",
                     "token t=0.1 k=1", "token t=0.1 k=1 E1"]
    assert grid[3] == {"exit_mode": "token", "threshold": 0.1, "window": 0, "entity_exit": True,
                       "entity_margin": 1, "entity_threshold_scale": 1.0}
    assert setting_name({**grid[3], "entity_threshold_scale": 0.5}) == "token t=0.1 k=0 E1 s=0.5"


def test_per_type_table_and_series() -> None:
    def row(setting, per_type, score):
        return {"model": "stage1", "name": setting_name(setting), "setting": setting, "score": score,
                "per_type": per_type, "exit_layer_mean": 2.0, "flops_speedup": 2.0, "wall_speedup": 1.8,
                "words_per_second": 100.0}

    off = {"exit_mode": "off"}
    entity = {"exit_mode": "token", "threshold": 0.1, "window": 0, "entity_exit": True, "entity_margin": 1,
              "entity_threshold_scale": 1.0}
    result = {"score_key": "ents_f", "rows": [
        row(off, {"LOC": 0.8, "PER": 0.9}, 0.85),
        row(entity, {"LOC": 0.75, "PER": 0.9}, 0.83),
    ]}
    table = per_type_table(result)
    assert "| stage1 | off | 80.0 | 90.0 |" in table
    assert "| stage1 | token t=0.1 k=0 E1 | 75.0 (-5.0) | 90.0 (+0.0) |" in table
    assert "| 0 E1 |" in markdown_table(result)
    assert list(dial_series(result["rows"])) == ["token k=0 E1"]
    assert per_type_scores({"ents_per_type": {"PER": {"p": 1, "r": 1, "f": 0.5}}}) == {"PER": 0.5}
    assert per_type_scores({"pos_acc": 0.9}) is None
    assert per_type_table({"rows": [{**result["rows"][0], "per_type": None}]}) == ""


def test_the_entity_rule_is_in_the_default_grid_of_ner_pipelines_only(tiny_bert, tmp_path) -> None:
    """`sweep` without --entity-margins: an NER pipeline sweeps plain TOKEE
    and the entity rule (margin 1), a POS pipeline plain TOKEE only."""
    import json

    from spacy.tokens import DocBin
    from spacy.training import Example

    from helpers.tiny_bert import NER_DATA, train_tiny_pipeline
    from spacy_earlyexit.cli import main
    from spacy_earlyexit.cli.sweep import default_entity_margins

    ner, pos = train_tiny_pipeline(tiny_bert, "ner", 0), train_tiny_pipeline(tiny_bert, "pos", 0)
    assert default_entity_margins([ner]) == "off,1" and default_entity_margins([ner, ner]) == "off,1"
    assert default_entity_margins([pos]) == "off"
    ner.to_disk(tmp_path / "ner")
    gold = [Example.from_dict(ner.make_doc(text), {"entities": ents}).reference for text, ents in NER_DATA]
    DocBin(docs=gold).to_disk(tmp_path / "dev.spacy")
    main(["sweep", "--pipeline", f"ner={tmp_path / 'ner'}", "--dev", str(tmp_path / "dev.spacy"),
          "--output", str(tmp_path / "sweep"), "--exit-modes", "token", "--thresholds", "0.3", "--windows", "0",
          "--repetitions", "1", "--batch-size", "8", "--bootstrap", "20", "--no-progress"])
    result = json.loads((tmp_path / "sweep.json").read_text())
    assert [row["name"] for row in result["rows"]] == ["off", "token t=0.3 k=0", "token t=0.3 k=0 E1"]
    assert result["bootstrap"]["resamples"] == 20 and result["rows"][2]["loss"]["resamples"] == 20
