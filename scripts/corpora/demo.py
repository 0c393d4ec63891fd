"""The demo's last step: annotate a few tweets-like sentences and print
their entities with the layers at which their tokens exited."""
from pathlib import Path
from typing import Optional, Sequence, Union

from spacy.language import Language

DEMO_TEXTS = [
    "Just landed in New York , heading to the Empire State Building with Justin Bieber tomorrow !",
    "Watching the Lakers game tonight with my brother in Los Angeles",
    "Taylor Swift 's new album is out on iTunes and Spotify",
    "Anyone going to the Apple store on Regent Street in London ?",
    "lol this is the best day ever",
]


def demo_annotate(
    pipeline: Union[str, Path, Language],
    texts: Optional[Sequence[str]] = None,
    html: Optional[Union[str, Path]] = None,
    *,
    name: Optional[str] = None,
) -> None:
    """Print, per text, its tokens with their exit layers and its entities;
    with `html`, also write the exit view of the texts there (visualize.render).

    pipeline: a pipeline folder or a loaded pipeline; name: how to call it in
    the output (default: the folder)."""
    import spacy

    from spacy_earlyexit.visualize import render

    nlp = pipeline if isinstance(pipeline, Language) else spacy.load(pipeline)
    tagger = nlp.get_pipe("earlyexit_tagger")
    settings = tagger.exit_settings
    print(f"pipeline {name or pipeline}: {tagger.n_layers} layers, saved exit setting: "
          f"mode={settings.exit_mode} threshold={settings.threshold} window={settings.window}")
    docs = list(nlp.pipe(texts or DEMO_TEXTS))
    for doc in docs:
        summary = doc._.early_exit
        print(f"\n{doc.text}")
        print("  tokens/exit layer: " + " ".join(f"{t.text}/{t._.exit_layer}" for t in doc))
        for ent in doc.ents:
            layers = ",".join(str(t._.exit_layer) for t in ent)
            print(f"  entity: {ent.text!r} {ent.label_} (exit layers {layers})")
        if not doc.ents:
            print("  entity: none")
        print(f"  mean exit layer {summary['exit_layer_mean']:.2f}, FLOPs speed-up {summary['flops_speedup']:.2f}x")
    if html is not None:
        path = Path(html)
        path.parent.mkdir(parents=True, exist_ok=True)
        page = render(docs, page=True, jupyter=False, n_layers=tagger.n_layers, settings=settings.to_dict())
        path.write_text(page or "", encoding="utf8")
        print(f"\nexit view: {path} (open it in a browser)")
