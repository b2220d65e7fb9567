"""Moving volumes and segmentations between the MRML scene and files, keeping their exact geometry."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import slicer
import vtk

from tcurlora.errors import InputError
from tcurlora.fsutil import atomic_file
from TCURLoRACommon.terminology import slicer_lookup, terminology_for

# A distinct, colour-blind friendly palette for classes without colours of their own.
PALETTE = (
    (0.90, 0.62, 0.00),
    (0.34, 0.71, 0.91),
    (0.00, 0.62, 0.45),
    (0.94, 0.89, 0.26),
    (0.00, 0.45, 0.70),
    (0.84, 0.37, 0.00),
    (0.80, 0.47, 0.65),
    (0.60, 0.60, 0.60),
)


def class_colors(names: Sequence[str], colors: Sequence[Sequence[float]] | None) -> list[list[float]]:
    """One RGB colour (0..1) per class: the given ones, else the palette."""
    if colors is not None and len(colors) == len(names):
        return [[float(c) for c in color[:3]] for color in colors]
    return [list(PALETTE[i % len(PALETTE)]) for i in range(len(names))]


def ijk_to_ras(volume: slicer.vtkMRMLVolumeNode) -> np.ndarray:
    """The 4x4 IJK-to-RAS matrix of a volume."""
    matrix = vtk.vtkMatrix4x4()
    volume.GetIJKToRASMatrix(matrix)
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def same_geometry(a: slicer.vtkMRMLVolumeNode, b: slicer.vtkMRMLVolumeNode, tolerance: float = 1e-4) -> bool:
    """True when two volumes share dimensions and IJK-to-RAS (origin, spacing and directions)."""
    dims_a = a.GetImageData().GetDimensions() if a.GetImageData() else None
    dims_b = b.GetImageData().GetDimensions() if b.GetImageData() else None
    return dims_a == dims_b and bool(np.allclose(ijk_to_ras(a), ijk_to_ras(b), atol=tolerance))


def require_untransformed(node: slicer.vtkMRMLNode) -> None:
    """Exported files carry no transform: refuse a node under a transform instead of moving it silently."""
    if node.GetParentTransformNode() is not None:
        raise InputError(f"'{node.GetName()}' is under a transform; harden the transform first (Data module)")


def write_volume(volume: slicer.vtkMRMLVolumeNode, path: str | Path) -> Path:
    """Write a volume (scalar or labelmap) with a storage node, atomically; the format follows the extension."""
    path = Path(path)
    require_untransformed(volume)
    if volume.GetImageData() is None:
        raise InputError(f"volume '{volume.GetName()}' has no voxels")
    # the temporary file keeps the extension(s), so the writer picks the same format
    with atomic_file(path, suffix="".join(path.suffixes) or ".nrrd") as temp:
        writer = slicer.vtkMRMLVolumeArchetypeStorageNode()
        writer.SetFileName(str(temp))
        if not writer.WriteData(volume):
            raise InputError(f"could not write volume '{volume.GetName()}'", path)
    return path


def read_volume(path: str | Path, class_name: str = "vtkMRMLScalarVolumeNode", name: str | None = None):
    """Read a volume file into a new node of `class_name` in slicer.mrmlScene (storage node attached)."""
    path = Path(path)
    if not path.is_file():
        raise InputError("file not found", path)
    scene = slicer.mrmlScene
    node = scene.AddNewNodeByClass(class_name, name or path.name.split(".")[0])
    storage = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    storage.SetFileName(str(path))
    if not storage.ReadData(node):
        scene.RemoveNode(node)
        scene.RemoveNode(storage)
        raise InputError("not a readable volume", path)
    node.SetAndObserveStorageNodeID(storage.GetID())
    return node


def segment_names(segmentation: slicer.vtkMRMLSegmentationNode) -> list[str]:
    """Names of the segments, in their order in the segmentation."""
    seg = segmentation.GetSegmentation()
    return [seg.GetNthSegment(i).GetName() for i in range(seg.GetNumberOfSegments())]


def labelmap_array(
    segmentation: slicer.vtkMRMLSegmentationNode, volume: slicer.vtkMRMLVolumeNode, names: Sequence[str]
) -> np.ndarray:
    """Segments `names` as one label array (values 1..N in that order) indexed like the volume's voxels.

    A segmentation on another grid is resampled onto the volume's grid.
    """
    require_untransformed(segmentation)
    seg = segmentation.GetSegmentation()
    representation = slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName()
    ids, values = vtk.vtkStringArray(), [0]
    for value, name in enumerate(names, start=1):
        segment_id = seg.GetSegmentIdBySegmentName(name)
        if not segment_id:
            raise InputError(f"segmentation '{segmentation.GetName()}' has no segment named '{name}'")
        if not _is_empty(seg.GetSegment(segment_id), representation):  # empty ones cannot be exported: 0
            ids.InsertNextValue(segment_id)
            values.append(value)
    if ids.GetNumberOfValues() == 0:
        return np.zeros(slicer.util.arrayFromVolume(volume).shape, np.uint8)
    scene = slicer.mrmlScene
    labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "__tcurlora_export__")
    try:
        if not slicer.modules.segmentations.logic().ExportSegmentsToLabelmapNode(
            segmentation, ids, labelmap, volume
        ):
            raise InputError(f"could not export segmentation '{segmentation.GetName()}'")
        exported = _onto_volume_grid(labelmap, volume)
        return np.asarray(values, np.uint16 if len(names) > 255 else np.uint8)[exported]
    finally:
        display = labelmap.GetDisplayNode()
        if (
            display is not None
            and display.GetColorNode() is not None
            and display.GetColorNode().GetName().startswith("__")
        ):
            scene.RemoveNode(display.GetColorNode())
        scene.RemoveNode(labelmap)


def _is_empty(segment: slicer.vtkSegment, representation: str) -> bool:
    """True when a segment has no voxel (its labelmap may be shared with other segments)."""
    from vtk.util.numpy_support import vtk_to_numpy

    image = segment.GetRepresentation(representation)
    if image is None or image.IsEmpty() or image.GetPointData().GetScalars() is None:
        return True
    return not (vtk_to_numpy(image.GetPointData().GetScalars()) == segment.GetLabelValue()).any()


def export_labelmap(
    segmentation: slicer.vtkMRMLSegmentationNode,
    volume: slicer.vtkMRMLVolumeNode,
    names: Sequence[str],
    path: str | Path,
) -> np.ndarray:
    """Write `labelmap_array` to a file with exactly the volume's geometry; returns the voxel count per class."""
    values = labelmap_array(segmentation, volume, names)
    labelmap = slicer.modules.volumes.logic().CreateAndAddLabelVolume(volume, "__tcurlora_export__")
    try:
        slicer.util.updateVolumeFromArray(
            labelmap, values.astype(np.uint8 if len(names) < 256 else np.uint16)
        )
        write_volume(labelmap, path)
    finally:
        slicer.mrmlScene.RemoveNode(labelmap)
    return np.bincount(values.ravel().astype(np.int64), minlength=len(names) + 1)[1 : len(names) + 1]


def _onto_volume_grid(
    labelmap: slicer.vtkMRMLLabelMapVolumeNode, volume: slicer.vtkMRMLVolumeNode
) -> np.ndarray:
    """The voxels of an exported labelmap, indexed like the volume's.

    Segmentations keep right-handed axes, so a volume with left-handed directions comes back from the
    export with an axis reversed (same voxels, other indexing). Undo such axis flips and permutations.
    """
    values = slicer.util.arrayFromVolume(labelmap)
    mapping = np.linalg.inv(ijk_to_ras(volume)) @ ijk_to_ras(labelmap)  # label IJK -> volume IJK
    axes, offset = np.round(mapping[:3, :3]), np.round(mapping[:3, 3])
    signed_permutation = (np.abs(axes).sum(0) == 1).all() and (np.abs(axes).sum(1) == 1).all()
    if not (signed_permutation and np.allclose(mapping[:3], np.c_[axes, offset], atol=1e-3)):
        raise InputError(f"could not export a segmentation onto the grid of volume '{volume.GetName()}'")
    source = [int(np.flatnonzero(axes[a])[0]) for a in range(3)]  # volume IJK axis a <- label IJK axis
    values = np.transpose(values, [2 - source[2 - m] for m in range(3)])
    values = np.flip(values, [m for m in range(3) if axes[2 - m, source[2 - m]] < 0])
    expected = slicer.util.arrayFromVolume(volume).shape
    if values.shape != expected:
        raise InputError(
            f"exported labelmap has shape {values.shape}, volume '{volume.GetName()}' {expected}"
        )
    return np.ascontiguousarray(values)


def _color_table(names: Sequence[str], colors: Sequence[Sequence[float]]) -> slicer.vtkMRMLColorTableNode:
    """A temporary colour table: value 0 background, value i the i-th class name and colour."""
    table = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLColorTableNode", "__tcurlora_classes__")
    table.SetTypeToUser()
    table.SetNumberOfColors(len(names) + 1)
    table.SetColor(0, "Background", 0.0, 0.0, 0.0, 0.0)
    for value, (name, color) in enumerate(zip(names, colors), start=1):
        table.SetColor(value, name, color[0], color[1], color[2], 1.0)
    return table


def import_labelmap(
    path: str | Path,
    volume: slicer.vtkMRMLVolumeNode,
    names: Sequence[str],
    colors: Sequence[Sequence[float]] | None = None,
    segmentation: slicer.vtkMRMLSegmentationNode | None = None,
    node_name: str | None = None,
) -> slicer.vtkMRMLSegmentationNode:
    """Load a labelmap file (values 1..N = `names`) as named, coloured segments referencing `volume`.

    Segments of an existing `segmentation` with the same names are replaced, others are kept. Classes
    absent from the labelmap become empty segments, so every class is always there. The node is placed in
    the volume's subject-hierarchy study.
    """
    scene = slicer.mrmlScene
    rgb = class_colors(names, colors)
    labelmap = read_volume(path, "vtkMRMLLabelMapVolumeNode", "__tcurlora_import__")
    table = _color_table(names, rgb)
    fresh = scene.AddNewNodeByClass(
        "vtkMRMLSegmentationNode", node_name or f"{volume.GetName()} segmentation"
    )
    try:
        labelmap.CreateDefaultDisplayNodes()
        labelmap.GetDisplayNode().SetAndObserveColorNodeID(table.GetID())
        fresh.SetReferenceImageGeometryParameterFromVolumeNode(volume)
        if not slicer.modules.segmentations.logic().ImportLabelmapToSegmentationNode(labelmap, fresh):
            raise InputError("could not import the labelmap as segments", path)
        _name_segments(fresh, names, rgb)
        if segmentation is not None:  # copy in: same-name segments replaced, the others kept
            segmentation.SetReferenceImageGeometryParameterFromVolumeNode(volume)
            target, source = segmentation.GetSegmentation(), fresh.GetSegmentation()
            for name in names:
                if target.GetSegmentIdBySegmentName(name):
                    target.RemoveSegment(target.GetSegmentIdBySegmentName(name))
                target.CopySegmentFromSegmentation(source, source.GetSegmentIdBySegmentName(name))
    except BaseException:
        scene.RemoveNode(fresh)
        raise
    finally:
        storage = labelmap.GetStorageNode()
        scene.RemoveNode(labelmap)
        if storage is not None:
            scene.RemoveNode(storage)
        scene.RemoveNode(table)
    if segmentation is None:
        fresh.CreateDefaultDisplayNodes()
        segmentation = fresh
    else:
        scene.RemoveNode(fresh)
    place_in_study(segmentation, volume)
    return segmentation


def _name_segments(
    node: slicer.vtkMRMLSegmentationNode, names: Sequence[str], colors: Sequence[Sequence[float]]
) -> None:
    """One segment per class in class order, named, coloured and coded (Slicer's terminology for the name);
    absent classes become empty segments."""
    seg = node.GetSegmentation()
    lookup = slicer_lookup()
    for index, (name, color) in enumerate(zip(names, colors)):
        segment_id = seg.GetSegmentIdBySegmentName(name) or seg.AddEmptySegment(name, name)
        segment = seg.GetSegment(segment_id)
        segment.SetColor(*color)
        segment.SetTag(slicer.vtkSegment.GetTerminologyEntryTagName(), terminology_for(name, lookup))
        seg.SetSegmentIndex(segment_id, index)


def new_label_segmentation(
    volume: slicer.vtkMRMLVolumeNode, names: Sequence[str], colors: Sequence[Sequence[float]] | None = None
) -> slicer.vtkMRMLSegmentationNode:
    """An empty segmentation on the volume's grid with one named, coloured segment per class, ready to paint."""
    segmentation = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", f"{volume.GetName()} labels")
    segmentation.CreateDefaultDisplayNodes()
    segmentation.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    _name_segments(segmentation, names, class_colors(names, colors))
    place_in_study(segmentation, volume)
    return segmentation


def hierarchy_item(node: slicer.vtkMRMLNode) -> int:
    """The node's subject-hierarchy item; created at the top level when missing (the application's
    subject-hierarchy plugins create it on their own, a bare scene does not)."""
    hierarchy = slicer.mrmlScene.GetSubjectHierarchyNode()
    item = hierarchy.GetItemByDataNode(node)
    return item or hierarchy.CreateItem(hierarchy.GetSceneItemID(), node)


def study_of(node: slicer.vtkMRMLNode) -> int:
    """The subject-hierarchy parent item (the study, when loaded from DICOM) of a node."""
    return slicer.mrmlScene.GetSubjectHierarchyNode().GetItemParent(hierarchy_item(node))


def place_in_study(node: slicer.vtkMRMLNode, volume: slicer.vtkMRMLNode) -> None:
    """Put `node` next to `volume` in the subject hierarchy (same study, same patient)."""
    hierarchy = slicer.mrmlScene.GetSubjectHierarchyNode()
    item, parent = hierarchy_item(node), study_of(volume)
    if hierarchy.GetItemParent(item) != parent:
        hierarchy.SetItemParent(item, parent)
