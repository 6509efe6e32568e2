"""The Gradio app: identify a plant from field photos with a trained herbarium-to-field ArcFace model.

``app.py`` is the UI; ``predictor.py`` loads and runs the model; ``reference.py`` embeds and searches
reference specimens; ``tsne_map.py`` draws the map; ``identification.py`` and ``taxonomy.py`` turn
probabilities into an honest answer; ``images.py`` opens user photos defensively.
"""
