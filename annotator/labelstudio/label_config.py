"""The labelling config of bookcounter's project, and the names in it that code relies on."""

from __future__ import annotations

IMAGE = "image"  # <Image name> and the task data key holding the photo URL
BRUSH = "mask"  # <BrushLabels name>: the answer format (prelabel predictions, annotations)
POLYGON = "polygon"  # <PolygonLabels name>: accepted from annotators, rasterised by collect
LABEL = "book"

# KeyPointLabels/RectangleLabels are the ML backend's prompt tools (smart = sent to the
# backend as the annotator clicks); collect ignores them, only brush and polygon are masks.
LABEL_CONFIG = f"""<View>
  <Image name="{IMAGE}" value="${IMAGE}" zoom="true" zoomControl="true" brightnessControl="true"/>
  <BrushLabels name="{BRUSH}" toName="{IMAGE}">
    <Label value="{LABEL}" background="#ff0066"/>
  </BrushLabels>
  <PolygonLabels name="{POLYGON}" toName="{IMAGE}" strokeWidth="2" pointSize="small">
    <Label value="{LABEL}" background="#00a0ff"/>
  </PolygonLabels>
  <KeyPointLabels name="click" toName="{IMAGE}" smart="true">
    <Label value="{LABEL}" smart="true" background="#ffa500" showInline="true"/>
  </KeyPointLabels>
  <RectangleLabels name="box" toName="{IMAGE}" smart="true">
    <Label value="{LABEL}" background="#ffa500" showInline="true"/>
  </RectangleLabels>
</View>"""
